"""Warnings that repeat (a store outage, garbage requests) logged once per interval, with
a count of what was left out, so an incident never floods the log.

>>> import logging
>>> times = iter([0.0, 1.0, 61.0])
>>> t = ThrottledLog(logging.getLogger("doctest"), interval=60.0, clock=times.__next__)
>>> t.allowed("redis down"), t.allowed("redis down"), t.allowed("redis down")
((True, 0), (False, 0), (True, 1))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

MAX_KEYS = 1024


class ThrottledLog:
    """At most one line per ``key`` every ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, left out since)
        self._lock = threading.Lock()

    def allowed(self, key: str) -> tuple[bool, int]:
        """(True, how many were left out since the last line) when this one may be logged."""
        now = self.clock()
        with self._lock:
            last, skipped = self._seen.get(key, (float("-inf"), 0))
            if now - last >= self.interval:
                if len(self._seen) >= MAX_KEYS:
                    self._seen.clear()
                self._seen[key] = (now, 0)
                return True, skipped
            self._seen[key] = (last, skipped + 1)
            return False, 0

    def warning(self, key: str, message: str, *args: object) -> None:
        ok, skipped = self.allowed(key)
        if ok:
            suffix = (f" ({skipped} more like it in the last {self.interval:.0f}s)"
                      if skipped else "")
            self.logger.warning(message + suffix, *args)
