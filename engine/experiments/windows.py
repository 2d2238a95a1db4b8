"""Drifting preferences: arm statistics in hourly buckets, windowed or discounted.

An experiment with ``window`` or ``half_life`` keeps its counts in hourly buckets
by decision time; :func:`discounted` sums the buckets inside the window, or weighs
each by ``0.5 ** (age / half_life)`` (exponential discounting, Garivier &
Moulines, 2011). Effective counts are then fractional.
"""

from __future__ import annotations

from collections.abc import Mapping

from dsl.ruleset import Experiment
from engine.records import ArmCounts

BUCKET_SECONDS = 3600
"""Granularity of windowed and discounted arm statistics (decision time, hours)."""


def counter_keys(arm: str, decided_at: float, windowed: bool) -> tuple[str, ...]:
    """The counters a reward for ``arm`` increments: the total, and its hour bucket."""
    if not windowed:
        return (arm,)
    return (arm, f"{arm}@{int(decided_at // BUCKET_SECONDS)}")


def discounted(raw: Mapping[str, ArmCounts], experiment: Experiment,
               now: float) -> dict[str, ArmCounts]:
    """Per-arm counts as the experiment's posterior sees them.

    ``raw`` maps counter keys (:func:`counter_keys`) to counts. Without a window or
    half-life these are the totals; otherwise the hour buckets, restricted to the
    window and weighted by the half-life.

    >>> from dsl.ruleset import BetaPrior, Experiment
    >>> from dsl.ast import Pos
    >>> e = Experiment("e", "p", ("a", "b"), BetaPrior(), "click", Pos("f", 1, 1),
    ...                half_life=3600.0)
    >>> raw = {"a": ArmCounts(30, 3), "a@0": ArmCounts(10, 1), "a@1": ArmCounts(20, 2)}
    >>> discounted(raw, e, now=3600.0 * 1.5)
    {'a': ArmCounts(trials=25.0, successes=2.5, sum_sq=0.0)}
    """
    if not experiment.windowed:
        return {key: counts for key, counts in raw.items() if "@" not in key}
    current = int(now // BUCKET_SECONDS)
    window = None if experiment.window is None else experiment.window / BUCKET_SECONDS
    half_life = None if experiment.half_life is None else experiment.half_life / BUCKET_SECONDS
    out: dict[str, ArmCounts] = {}
    for key, counts in raw.items():
        arm, _, bucket = key.partition("@")
        if not bucket:
            continue
        age = current - int(bucket)
        if window is not None and age >= window:
            continue
        weight = 1.0 if half_life is None else 0.5 ** (max(age, 0) / half_life)
        total = out.setdefault(arm, ArmCounts())
        total.trials += weight * counts.trials
        total.successes += weight * counts.successes
        total.sum_sq += weight * counts.sum_sq
    return out
