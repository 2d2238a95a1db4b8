"""The JSON-lines decision log: bounded while its writer is behind, and rotation-safe."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from adapters.decision_log import JsonlDecisionLog, iter_log
from adapters.memory import MemoryStore
from dsl.loader import load_path
from engine.grpc.metrics import ServerMetrics
from engine.service import Arbiter
from tests.conftest import RETAIL


def _line(decision_id: str) -> dict[str, Any]:
    return {"kind": "outcome", "decision_id": decision_id, "action_id": "a",
            "outcome": "click", "at": 1.0}


class StuckFile:
    """A file whose writes wait until released (a disk that stalls)."""

    def __init__(self, real: Any) -> None:
        self.real, self.release = real, threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return int(self.real.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_stalled_writer_drops_and_counts_lines_instead_of_growing(tmp_path: Path) -> None:
    log = JsonlDecisionLog(tmp_path / "d.jsonl", flush_seconds=0.05, max_queued=10)
    stuck = StuckFile(log._file)
    log._file = stuck  # type: ignore[assignment]
    for i in range(100):
        log.write(_line(f"d{i}"))
    assert 89 <= log.dropped <= 90  # one taken by the writer, ten waiting
    stuck.release.set()
    log.close()
    written = list(iter_log(tmp_path / "d.jsonl"))
    assert len(written) == 100 - log.dropped
    assert written[0]["decision_id"] == "d0"  # the oldest kept, the newest dropped


def test_a_rotated_log_is_reopened_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    log.write(_line("before"))
    time.sleep(0.2)
    path.rename(tmp_path / "d.jsonl.1")  # logrotate's default: move, then a new file
    time.sleep(0.2)
    log.write(_line("after"))
    log.close()
    assert [e["decision_id"] for e in iter_log(tmp_path / "d.jsonl.1")] == ["before"]
    assert [e["decision_id"] for e in iter_log(path)] == ["after"]


def test_dropped_lines_are_a_metric(tmp_path: Path) -> None:
    log = JsonlDecisionLog(tmp_path / "d.jsonl")
    arbiter = Arbiter(load_path(RETAIL), MemoryStore(), seed=1, decision_log=log)
    log.dropped = 3
    try:
        scraped = generate_latest(ServerMetrics(arbiter, None).registry).decode()
        assert "arbiter_decision_log_dropped_total 3.0" in scraped
    finally:
        arbiter.close()
