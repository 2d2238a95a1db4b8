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

The queue is bounded (``max_queued`` lines): when the writer falls behind (a slow disk),
new lines are dropped and counted (``dropped``, the ``arbiter_decision_log_dropped``
metric) instead of the server's memory growing; decisions are served either way. The file
is reopened when it was moved or removed (``logrotate`` without ``copytruncate``), as
:class:`logging.handlers.WatchedFileHandler` does.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.records import is_log_entry

log = logging.getLogger(__name__)


MAX_QUEUED = 100_000
"""Lines waiting for the writer, at most (then new ones are dropped and counted)."""


class JsonlDecisionLog:
    """Appends log entries to a file, one JSON object per line, off the request path."""

    def __init__(self, path: str | Path, flush_seconds: float = 0.5,
                 max_queued: int = MAX_QUEUED) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[dict[str, Any] | _Forget | None] = queue.Queue(max_queued)
        self._flush_seconds = flush_seconds
        self._file = self.path.open("a", encoding="utf-8")
        self.dropped = 0
        """Lines dropped because the writer was behind by ``max_queued``."""
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, entry: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10) or self.dropped % 10_000 == 0:
                log.warning("decision log: the writer is behind; %d lines dropped so far",
                            self.dropped)

    def _run(self) -> None:
        checked = time.monotonic()
        while True:
            if time.monotonic() - checked >= self._flush_seconds:
                checked = time.monotonic()
                self._reopen_if_moved()
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

    def _reopen_if_moved(self) -> None:
        """A new file at the path when the one written was moved or removed (rotated)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        written = os.fstat(self._file.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (written.st_dev,
                                                                    written.st_ino):
            self._file.flush()
            self._file.close()
            self._file = self.path.open("a", encoding="utf-8")

    def forget(self, user_id: str, timeout: float = 60.0) -> int:
        """Remove every line about ``user_id`` (its decisions and their outcomes) from the
        file, after everything queued before is written; returns the lines removed."""
        request = _Forget(user_id)
        self._queue.put(request, timeout=timeout)  # never dropped: it waits for room
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
        try:
            self._queue.put(None, timeout=10)
        except queue.Full:
            log.warning("decision log: the writer did not drain in time; closing")
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
