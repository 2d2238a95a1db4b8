"""Send-time optimisation: when in the week each customer engages, shrunk toward when
everyone does.

Each engagement (a click or conversion reported with Feedback, any TrackEvent) adds one
to its hour of the week (UTC, Monday 00:00 = 0, up to 167) on the customer's profile
and to the population's histogram, which replicas share through the store (each
process adds its own engagements and reads everyone's back every second; see
:class:`PopulationHours`). The customer's smoothed engagement in hour ``h`` is::

    n_u[h] + STRENGTH * n_pop[h] / N_pop

(a Dirichlet posterior mean up to a constant: a customer with few engagements gets the
population's best hour; one with many, their own). :func:`best_slot` is its argmax;
rules read it as ``best_send_hour()`` (0-23 in the customer's time zone) and an email
decision carries the next such hour as ``best_send_at``.

>>> monday_9 = 4 * 86400 + 9 * 3600  # 1970-01-05 09:00 UTC, a Monday
>>> hour_of_week(monday_9)
9
>>> best_slot({9: 3.0}, {20: 100.0})  # their own three engagements beat the prior
9
>>> best_slot({}, {20: 100.0, 9: 10.0})  # nothing of their own: the population's best
20
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

HOURS_PER_WEEK = 168
STRENGTH = 3.0
"""How many of a customer's own engagements the population's histogram weighs."""
EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (Monday = 0)."""
COUNTER = "engagement_hours"
"""The store's shared counter hash of the population's engagements by hour of week."""


def hour_of_week(at: float) -> int:
    """0 (Monday 00:00-00:59 UTC) to 167 (Sunday 23:00-23:59 UTC)."""
    return int((at // 3600 + EPOCH_WEEKDAY * 24) % HOURS_PER_WEEK)


def best_slot(own: Mapping[int, float], population: Mapping[int, float]) -> int | None:
    """The hour of the week with the highest smoothed engagement; None when neither the
    customer nor the population has any (ties: the earliest hour)."""
    total = sum(population.values())
    if not own and total <= 0:
        return None
    prior = STRENGTH / total if total > 0 else 0.0
    best, best_score = None, -1.0
    for h in range(HOURS_PER_WEEK):
        score = own.get(h, 0.0) + prior * population.get(h, 0.0)
        if score > best_score:
            best, best_score = h, score
    return best


def next_time_in_slot(slot: int, now: float) -> float:
    """The start of the next hour that falls in ``slot`` (now's own hour if it does)."""
    hour_start = now - now % 3600
    ahead = (slot - hour_of_week(now)) % HOURS_PER_WEEK
    return hour_start + ahead * 3600


class SendTime:
    """One customer's send-time facts, as rules read them (``best_send_hour()``)."""

    __slots__ = ("own", "population", "zone")

    def __init__(self, own: Mapping[int, float], population: Mapping[int, float],
                 zone: object) -> None:
        self.own, self.population, self.zone = own, population, zone

    def best_at(self, now: float) -> float | None:
        """The start of the next hour in the customer's best slot, or None."""
        slot = best_slot(self.own, self.population)
        return None if slot is None else next_time_in_slot(slot, now)


class PopulationHours:
    """The population's engagement histogram in this process: what the store said at the
    last :meth:`sync`, plus what this process added since (so its own engagements count
    at once). Bounded: 168 counters, however many engagements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: dict[int, float] = {}
        self._pending: dict[int, float] = {}

    def add(self, at: float, n: float = 1.0) -> None:
        h = hour_of_week(at)
        with self._lock:
            self._pending[h] = self._pending.get(h, 0.0) + n

    def histogram(self) -> dict[int, float]:
        with self._lock:
            if not self._pending:
                return self._shared
            merged = dict(self._shared)
            for h, n in self._pending.items():
                merged[h] = merged.get(h, 0.0) + n
            return merged

    def sync(self, add_counters: Callable[[str, Mapping[str, float]], Mapping[str, float]]
             ) -> None:
        """Send what this process added, read everyone's totals (one store call). On a
        failure the pending counts are kept for the next sync."""
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            totals = add_counters(COUNTER, {str(h): n for h, n in pending.items()})
        except BaseException:
            with self._lock:
                for h, n in pending.items():
                    self._pending[h] = self._pending.get(h, 0.0) + n
            raise
        shared = {int(h): float(n) for h, n in totals.items()
                  if h.isdigit() and int(h) < HOURS_PER_WEEK}
        with self._lock:
            self._shared = shared
