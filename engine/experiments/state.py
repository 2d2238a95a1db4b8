"""Each experiment's posterior, as a fixed matrix of draws between statistics refreshes.

Thompson sampling here samples a *row* of a matrix of ``DRAWS`` joint posterior
draws, regenerated whenever the experiment's statistics change (at most every
refresh interval, and after this process's own feedback: at once, and on a server at
most every :data:`OWN_FEEDBACK_REFRESH_SECONDS` during a burst). Two things follow:

* A decision costs one random integer, not a fresh Beta draw per arm.
* The probability that the policy chose what it showed is *exact*: the share of
  rows that lead to the same choice. Decisions log it for off-policy evaluation
  (:mod:`engine.cli.replay`), with no Monte Carlo estimate of the propensity.

The rows are ``DRAWS`` independent samples of the current posterior, so this is
Thompson sampling from the posterior's empirical distribution; 256 rows resolve
allocation probabilities to 1/256.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cachetools import TTLCache

from dsl.ruleset import Experiment
from engine.experiments.posteriors import Posterior, experiment_posteriors
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.windows import discounted
from engine.records import ArmCounts

DRAWS = 256
"""Rows of posterior draws per experiment (each decision picks one)."""
MEMO_LIMIT = 4096
"""Entries an experiment state keeps of what decisions computed from its draws."""
REFRESH_SECONDS = 1.0
"""Arm counters are re-read from the store at most this often (other replicas' feedback)."""
OWN_FEEDBACK_REFRESH_SECONDS = 0.05
"""In push mode (a server), this process's own feedback re-reads an experiment's counters
at most this often: a burst (a campaign's impressions, hundreds a millisecond) costs one
read and one rebuild of the draws per interval, not one each; what a burst's tail moved
is read by the next feedback after the interval, or by the next sync (≤ REFRESH_SECONDS),
as other replicas' feedback is."""


@dataclass(frozen=True)
class ExperimentState:
    """An experiment's per-arm counts, posteriors and draws, in ``experiment.arms`` order."""

    experiment: Experiment
    counts: Mapping[str, ArmCounts]
    posteriors: tuple[Posterior, ...]
    draws: np.ndarray  # (DRAWS, arms): sampled mean reward of each arm
    # what decisions compute from these draws, by the inputs that decide it (the arms'
    # values, the other candidates' scores); dropped with the state when counts change
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def remember(self, key: Any, value: Any) -> Any:
        """Keep ``value`` under ``key`` (at most MEMO_LIMIT entries); returns it."""
        if len(self.memo) >= MEMO_LIMIT:
            self.memo.clear()
        self.memo[key] = value
        return value


def build_state(experiment: Experiment, raw: Mapping[str, ArmCounts], now: float,
                sampler: ThompsonSampler, draws: int = DRAWS) -> ExperimentState:
    counts = discounted(raw, experiment, now)
    posteriors = experiment_posteriors(experiment.prior, experiment.arms, counts)
    return ExperimentState(experiment, counts, posteriors,
                           sampler.sample_many(posteriors, draws))


class ExperimentStates:
    """The current :class:`ExperimentState` of each experiment, rebuilt on change.

    Owns the cache of the store's raw counters (``store_counts(name)``): they are
    re-read at most every ``refresh`` seconds, at once after :meth:`invalidate`
    (this process's own feedback). New counters or a new :class:`Experiment` (a
    reload) rebuild the state; otherwise every decision shares the same draws.

    After :meth:`push_only`, decisions never read the store: they use the counters
    last fetched by :meth:`refresh` (a background task every second, and the
    feedback path after its own writes), which is what an asynchronous server needs
    (no blocking read on its event loop).
    """

    def __init__(self, store_counts: Callable[[str], Mapping[str, ArmCounts] | None],
                 sampler: ThompsonSampler, clock: Callable[[], float],
                 refresh: float = REFRESH_SECONDS) -> None:
        self._store_counts = store_counts
        self._sampler = sampler
        self._clock = clock
        self._counts: TTLCache[str, Mapping[str, ArmCounts]] = TTLCache(
            maxsize=1024, ttl=refresh)
        self._states: dict[str, tuple[Mapping[str, ArmCounts], ExperimentState]] = {}
        self._last: dict[str, Mapping[str, ArmCounts]] = {}  # last counters read, per name
        self._lock = threading.Lock()  # cachetools caches are not thread-safe
        self.pull = True  # False: decisions use what refresh() fetched
        self._refreshed_at: dict[str, float] = {}  # push mode: last own-feedback re-read
        self._moved: set[str] = set()  # push mode: moved by own feedback, not re-read yet

    def push_only(self) -> None:
        """From now on decisions never read the store; :meth:`refresh` feeds them."""
        self.pull = False

    def refresh(self, names: Iterable[str]) -> None:
        """Re-read these experiments' counters now (in the caller's thread); an
        unavailable store keeps the last known."""
        names = list(names)
        with self._lock:
            self._moved.difference_update(names)
        for name in names:
            fresh = self._store_counts(name)
            if fresh is not None:
                with self._lock:
                    self._counts[name] = fresh
                    self._last[name] = fresh

    def counts(self, name: str) -> Mapping[str, ArmCounts]:
        """The experiment's raw counters (:func:`engine.experiments.windows.counter_keys`)."""
        if not self.pull:
            return self._last.get(name, {})
        with self._lock:
            counts = self._counts.get(name)
        if counts is None:
            fresh = self._store_counts(name)
            if fresh is None:  # the store is unavailable: the last known, not cached
                return self._last.get(name, {})
            counts = fresh
            with self._lock:
                self._counts[name] = counts
                self._last[name] = counts
        return counts

    def due(self, names: Iterable[str]) -> list[str]:
        """Push mode: of the experiments this process's feedback moved, those to re-read
        now (with any moved earlier and not re-read yet), at most once per
        :data:`OWN_FEEDBACK_REFRESH_SECONDS` each; the others wait for the next.

        >>> states = ExperimentStates(lambda name: {}, None, time.time)
        >>> states.due(["hero"]), states.due(["hero"]), states.due(["other"])
        (['hero'], [], ['other'])
        """
        now = time.monotonic()
        with self._lock:
            self._moved.update(names)
            due = [name for name in self._moved
                   if now - self._refreshed_at.get(name, -math.inf)
                   >= OWN_FEEDBACK_REFRESH_SECONDS]
            for name in due:
                self._refreshed_at[name] = now
            self._moved.difference_update(due)
        return due

    def invalidate(self, names: Iterable[str]) -> None:
        """Re-read these experiments' counters on next use (after this process's feedback);
        in push mode, re-read those :meth:`due` now."""
        names = list(names)
        if not names and not self._moved:  # (most feedback moves no experiment)
            return
        if not self.pull:
            self.refresh(self.due(names))
            return
        with self._lock:
            for name in names:
                self._counts.pop(name, None)

    def invalidate_all(self) -> None:
        """Re-read every experiment's counters on next use (other replicas' feedback)."""
        with self._lock:
            self._counts.clear()

    def get(self, experiment: Experiment) -> ExperimentState:
        raw = self.counts(experiment.name)
        with self._lock:
            cached = self._states.get(experiment.name)
        if cached is not None and cached[0] is raw and cached[1].experiment is experiment:
            return cached[1]
        state = build_state(experiment, raw, self._clock(), self._sampler)
        with self._lock:
            self._states[experiment.name] = (raw, state)
        return state
