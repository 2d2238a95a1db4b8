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
>>> best_slot({9: 3.0}, Prior({20: 100.0}))  # their own three engagements beat the prior
9
>>> best_slot({}, Prior({20: 100.0, 9: 10.0}))  # nothing of their own: the population's
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


class Prior:
    """The population's share of every customer's smoothed engagement, computed once per
    population update: ``STRENGTH * n_pop[h] / N_pop`` and its best hour."""

    __slots__ = ("best", "best_score", "weights")

    def __init__(self, population: Mapping[int, float]) -> None:
        total = sum(n for n in population.values() if n > 0)
        self.weights = ({h: STRENGTH * n / total for h, n in population.items() if n > 0}
                        if total > 0 else {})
        self.best: int | None = None
        self.best_score = -1.0
        for h in sorted(self.weights):  # the earliest of equal hours
            if self.weights[h] > self.best_score:
                self.best, self.best_score = h, self.weights[h]


NO_PRIOR = Prior({})


def best_slot(own: Mapping[int, float], prior: Prior) -> int | None:
    """The hour of the week with the highest smoothed engagement, the earliest of equals;
    None when neither the customer nor the population has any. O(the customer's hours):
    an hour they never engaged in cannot beat the population's best."""
    best, best_score = prior.best, prior.best_score
    for h, n in own.items():
        score = n + prior.weights.get(h, 0.0)
        if score > best_score or (score == best_score and best is not None and h < best):
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

    def __init__(self, own: Mapping[int, float], population: Prior, zone: object) -> None:
        self.own, self.population, self.zone = own, population, zone

    def best_at(self, now: float) -> float | None:
        """The start of the next hour in the customer's best slot, or None."""
        slot = best_slot(self.own, self.population)
        return None if slot is None else next_time_in_slot(slot, now)


class PopulationHours:
    """The population's engagement histogram as decisions see it: everyone's totals as
    the store had them at the last :meth:`sync` (every second), this process's own
    engagements included once synced. Bounded: 168 counters, however many engagements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, float] = {}
        self.prior = NO_PRIOR

    def add(self, at: float, n: float = 1.0) -> None:
        h = hour_of_week(at)
        with self._lock:
            self._pending[h] = self._pending.get(h, 0.0) + n

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
        self.prior = Prior(shared)  # one reference swap: decisions never see half of it
