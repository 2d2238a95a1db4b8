"""Decision logs: every decision and every acknowledged outcome, as JSON lines.

Like OPA's decision logs, they record what was decided, from which input, by
which ruleset revision, so that a decision can be audited and a candidate policy
evaluated offline (``arbiter replay``). The request builds the entry
(:mod:`engine.decision_log`) and enqueues it; a background thread encodes and
writes the lines and flushes at least every ``flush_seconds``.

A decision line::

    {"kind": "decision", "decision_id": "...", "at": 1790000000.0, "user_id": "ann",
     "placement": "homepage_banner", "channel": "web", "revision": "ecab5d1c5852",
     "context": {...}, "profile": {...}, "holdout": null,
     "actions": [{"action_id": "new_arrivals", "rank": 1, "score": 0.9,
                  "propensity": 0.06, "probability": 0.41, "experiment": "hero_test",
                  "arm": "new_arrivals"}]}

An outcome line: ``{"kind": "outcome", "decision_id", "action_id", "outcome",
"value", "at"}``. Profile attributes declared ``pii`` are replaced by ``"<pii>"``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonlDecisionLog:
    """Appends log entries to a file, one JSON object per line, off the request path."""

    def __init__(self, path: str | Path, flush_seconds: float = 0.5) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._flush_seconds = flush_seconds
        self._file = self.path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, entry: dict[str, Any]) -> None:
        self._queue.put(entry)

    def _run(self) -> None:
        while True:
            try:
                entry = self._queue.get(timeout=self._flush_seconds)
            except queue.Empty:
                self._file.flush()
                continue
            if entry is None:
                break
            try:
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            except (TypeError, ValueError):
                log.exception("decision log entry could not be encoded")
            if self._queue.empty():
                self._file.flush()
        self._file.flush()

    def close(self) -> None:
        """Write everything queued, then close the file."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._file.close()


def iter_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a decision log, in order, one at a time (a torn line is skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a decision log, in order (small logs and tests; see iter_log)."""
    return list(iter_log(path))
