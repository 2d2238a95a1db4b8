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
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.records import is_log_entry

log = logging.getLogger(__name__)


class JsonlDecisionLog:
    """Appends log entries to a file, one JSON object per line, off the request path."""

    def __init__(self, path: str | Path, flush_seconds: float = 0.5) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[dict[str, Any] | _Forget | None] = queue.Queue()
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
            if isinstance(entry, _Forget):
                self._forget(entry)
                continue
            try:
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            except (TypeError, ValueError):
                log.exception("decision log entry could not be encoded")
            if self._queue.empty():
                self._file.flush()
        self._file.flush()

    def forget(self, user_id: str, timeout: float = 60.0) -> int:
        """Remove every line about ``user_id`` (its decisions and their outcomes) from the
        file, after everything queued before is written; returns the lines removed."""
        request = _Forget(user_id)
        self._queue.put(request)
        if not request.done.wait(timeout):
            raise TimeoutError("the decision log did not compact in time")
        return request.removed

    def _forget(self, request: _Forget) -> None:
        self._file.flush()
        self._file.close()
        try:
            request.removed = compact(self.path, request.user_id)
        except OSError:
            log.exception("decision log: forgetting a user failed")
        finally:
            self._file = self.path.open("a", encoding="utf-8")
            request.done.set()

    def close(self) -> None:
        """Write everything queued, then close the file."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._file.close()


class _Forget:
    """A request, queued behind the writes, to remove a user's lines."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.removed = 0
        self.done = threading.Event()


def compact(path: Path, user_id: str) -> int:
    """Rewrite the log without the user's decisions and the outcomes that refer to them
    (an atomic replace); returns how many lines were removed."""
    decisions = {e.get("decision_id") for e in iter_log(path)
                 if e.get("kind") == "decision" and e.get("user_id") == user_id}
    removed = 0
    temporary = path.with_name(path.name + ".forget")
    with path.open(encoding="utf-8") as source, temporary.open("w", encoding="utf-8") as out:
        for line in source:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                out.write(line)
                continue
            if entry.get("user_id") == user_id or entry.get("decision_id") in decisions:
                removed += 1
                continue
            out.write(line)
    os.replace(temporary, path)
    return removed


def iter_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a decision log, in order, one at a time. A line that is torn, not
    JSON, not UTF-8 or not shaped like a log entry is skipped (one warning at the end
    says how many): a damaged log reads as the good lines it still has."""
    skipped = 0
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                entry = None
            if is_log_entry(entry):
                yield entry
            elif line.strip():
                skipped += 1
    if skipped:
        log.warning("decision log %s: %d damaged line(s) skipped", path, skipped)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a decision log, in order (small logs and tests; see iter_log)."""
    return list(iter_log(path))
