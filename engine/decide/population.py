"""Population percentiles of per-customer aggregates, shared by replicas.

``percentile(sum(purchase.value), 80)`` in a rule reads the 80th percentile, over all
customers, of each customer's all-time purchase total. Each statistic is a histogram
of the customers' current values in logarithmic buckets (the mapping of DDSketch,
Masson, Rim and Lee, VLDB 2019: relative accuracy 1%, so a percentile is within 1% of
a true customer value). When a customer's value changes, their count moves from the
old bucket to the new one, so the histogram always holds each customer once, at their
current value. Replicas share it as store counters (``add_counters``), each process
sending its moves and reading the totals back every second; decisions read the last
totals. Bounded: a few hundred buckets per statistic, however many customers.

>>> stats = PopulationStats()
>>> for spend in [0, 10, 20, 30, 40, 50, 60, 70, 80, 1000]:
...     stats.move({"sum:purchase": None}, {"sum:purchase": float(spend)})
>>> stats.sync(MemoryCounters(), ["sum:purchase"])
>>> p50, p90 = stats.percentile("sum:purchase", 50), stats.percentile("sum:purchase", 90)
>>> abs(p50 - 40) / 40 < 0.01, abs(p90 - 80) / 80 < 0.01  # within the accuracy
(True, True)
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

from engine.records import Profile

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = math.log(GAMMA)
ZERO = 1e-9
"""Values smaller than this in magnitude share one bucket, at 0."""
COUNTER_PREFIX = "pct:"

AddCounters = Callable[[str, Mapping[str, float]], Mapping[str, float]]


def bucket(value: float) -> str:
    """The bucket of a value: ``z`` (about 0), ``pI`` (positive), ``nI`` (negative).

    >>> bucket(0.0), bucket(100.0), bucket(-100.0)
    ('z', 'p231', 'n231')
    """
    if abs(value) < ZERO:
        return "z"
    index = math.ceil(math.log(abs(value)) / LOG_GAMMA)
    return f"{'p' if value > 0 else 'n'}{index}"


def bucket_value(key: str) -> float:
    """The value a bucket stands for (within RELATIVE_ACCURACY of any value in it)."""
    if key == "z":
        return 0.0
    magnitude = 2 * GAMMA ** int(key[1:]) / (GAMMA + 1)
    return magnitude if key[0] == "p" else -magnitude


def statistics(profile: Profile | None, keys: Iterable[str]) -> dict[str, float | None]:
    """A customer's value of each statistic (``count:E``, ``sum:E``, ``profile:NAME``);
    None for no profile, or an attribute that is not a number."""
    out: dict[str, float | None] = {}
    for key in keys:
        kind, _, name = key.partition(":")
        if profile is None:
            out[key] = None
        elif kind in ("count", "sum"):
            stats = profile.events.get(name)
            out[key] = 0.0 if stats is None else float(
                stats.count if kind == "count" else stats.total)
        else:
            value = profile.attributes.get(name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            out[key] = float(value) if ok and math.isfinite(value) else None  # type: ignore[arg-type]
    return out


class _Snapshot:
    """A statistic's histogram, sorted, with cumulative counts (one bisect per read)."""

    __slots__ = ("cumulative", "total", "values")

    def __init__(self, counts: Mapping[str, float]) -> None:
        pairs = sorted((bucket_value(k), n) for k, n in counts.items() if n > 0)
        self.values = [v for v, _ in pairs]
        self.cumulative: list[float] = []
        running = 0.0
        for _, n in pairs:
            running += n
            self.cumulative.append(running)
        self.total = running

    def percentile(self, percent: float) -> float | None:
        if self.total <= 0:
            return None
        rank = max(1.0, math.ceil(percent / 100.0 * self.total))  # nearest rank
        i = bisect_left(self.cumulative, rank)
        return self.values[min(i, len(self.values) - 1)]


class PopulationStats:
    """The percentile() statistics as decisions see them: the store's totals at the last
    :meth:`sync`, this process's own moves included once synced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = {}
        self._snapshots: dict[str, _Snapshot] = {}

    def move(self, before: Mapping[str, float | None], after: Mapping[str, float | None]
             ) -> None:
        """One customer's values changed from ``before`` to ``after`` (None: absent)."""
        with self._lock:
            for key in set(before) | set(after):
                old, new = before.get(key), after.get(key)
                old_bucket = None if old is None else bucket(old)
                new_bucket = None if new is None else bucket(new)
                if old_bucket == new_bucket:
                    continue
                pending = self._pending.setdefault(key, {})
                if old_bucket is not None:
                    pending[old_bucket] = pending.get(old_bucket, 0.0) - 1.0
                if new_bucket is not None:
                    pending[new_bucket] = pending.get(new_bucket, 0.0) + 1.0

    def sync(self, add_counters: AddCounters | MemoryCounters, keys: Iterable[str]) -> None:
        """Send this process's moves, read the totals of every statistic in ``keys`` (the
        serving ruleset's). On a failure the moves are kept for the next sync."""
        add = add_counters.add if isinstance(add_counters, MemoryCounters) else add_counters
        with self._lock:
            pending, self._pending = self._pending, {}
        snapshots: dict[str, _Snapshot] = {}
        try:
            for key in sorted(set(keys) | set(pending)):
                totals = add(COUNTER_PREFIX + key, pending.pop(key, {}))
                snapshots[key] = _Snapshot(totals)
        except BaseException:
            with self._lock:
                for key, deltas in pending.items():
                    mine = self._pending.setdefault(key, {})
                    for b, n in deltas.items():
                        mine[b] = mine.get(b, 0.0) + n
            raise
        self._snapshots = snapshots  # one reference swap

    def percentile(self, key: str, percent: float) -> float | None:
        snapshot = self._snapshots.get(key)
        return None if snapshot is None else snapshot.percentile(percent)


class MemoryCounters:
    """Counters in a dict, for examples and tests (the stores implement ``add_counters``)."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, float]] = {}

    def add(self, name: str, deltas: Mapping[str, float]) -> dict[str, float]:
        counters = self.counters.setdefault(name, {})
        for key, delta in deltas.items():
            counters[key] = counters.get(key, 0.0) + delta
        return dict(counters)
