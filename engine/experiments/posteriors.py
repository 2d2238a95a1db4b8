"""Thompson sampling: posteriors of arm rewards, vectorised sampling, bucketed statistics.

Binary rewards (click, conversion) have a Beta-Bernoulli posterior,
``Beta(alpha0 + successes, beta0 + trials - successes)``. Continuous rewards
(``reward: conversion.value``: revenue per impression, zero when nothing was
bought) have a Normal-Gamma posterior over the mean and precision, updated from
``n``, ``sum`` and ``sum of squares``; the arm's mean reward is Student-t
distributed. A decision draws every eligible arm's mean in one NumPy call and
plays the best (Thompson, 1933; Chapelle & Li, 2011). The random source is seeded
once, in :class:`ThompsonSampler`.

Drifting preferences: an experiment with ``window`` or ``half_life`` keeps its
counts in hourly buckets by decision time; :func:`discounted` sums the buckets
inside the window, or weighs each by ``0.5 ** (age / half_life)`` (exponential
discounting, Garivier & Moulines, 2011). Effective counts are then fractional.

>>> sampler = ThompsonSampler(seed=7)
>>> prior = BetaPrior(1, 1)
>>> arms = [posterior_of(ArmCounts(100, 60), prior), posterior_of(ArmCounts(100, 5), prior)]
>>> arms[0]
BetaPosterior(alpha=61.0, beta=41.0)
>>> draws = sampler.sample(arms)
>>> bool(draws[0] > draws[1])
True
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from dsl.ruleset import BetaPrior, Experiment, NormalGammaPrior, Prior
from engine.records import ArmCounts

HOLDOUT_ARM = "holdout"
"""The pseudo-arm under which a holdout's fallback action is counted (its outcomes)."""
BUCKET_SECONDS = 3600
"""Granularity of windowed and discounted arm statistics (decision time, hours)."""


class BetaPosterior(NamedTuple):
    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Central credible interval of the reward rate."""
        tail = (1.0 - level) / 2.0
        lo, hi = stats.beta.ppf([tail, 1.0 - tail], self.alpha, self.beta)
        return float(lo), float(hi)


class NormalGammaPosterior(NamedTuple):
    mu: float
    kappa: float
    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.mu

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Central credible interval of the mean reward (a Student-t marginal)."""
        tail = (1.0 - level) / 2.0
        scale = math.sqrt(self.beta / (self.alpha * self.kappa))
        lo, hi = stats.t.ppf([tail, 1.0 - tail], 2.0 * self.alpha, loc=self.mu, scale=scale)
        return float(lo), float(hi)


Posterior = BetaPosterior | NormalGammaPosterior


def beta_posterior(counts: ArmCounts | None, prior: BetaPrior) -> BetaPosterior:
    if counts is None:
        return BetaPosterior(float(prior.alpha), float(prior.beta))
    successes = max(counts.successes, 0.0)
    failures = max(counts.trials - successes, 0.0)  # a reward without a trial: never < 0
    return BetaPosterior(float(prior.alpha + successes), float(prior.beta + failures))


def normal_gamma_posterior(counts: ArmCounts | None, prior: NormalGammaPrior
                           ) -> NormalGammaPosterior:
    """The conjugate update from ``n = trials``, ``sum = successes``, ``sum_sq``.

    >>> normal_gamma_posterior(ArmCounts(4, 8, 20), NormalGammaPrior(0, 1, 1, 1))
    NormalGammaPosterior(mu=1.6, kappa=5.0, alpha=3.0, beta=4.6)
    """
    n = counts.trials if counts is not None else 0.0
    if n <= 0 or counts is None:
        return NormalGammaPosterior(prior.mu, prior.kappa, prior.alpha, prior.beta)
    mean = counts.successes / n
    spread = max(counts.sum_sq - n * mean * mean, 0.0)  # sum of squared deviations
    kappa = float(prior.kappa + n)
    return NormalGammaPosterior(
        mu=(prior.kappa * prior.mu + n * mean) / kappa,
        kappa=kappa,
        alpha=prior.alpha + n / 2.0,
        beta=prior.beta + spread / 2.0 + prior.kappa * n * (mean - prior.mu) ** 2 / (2.0 * kappa),
    )


def posterior_of(counts: ArmCounts | None, prior: Prior) -> Posterior:
    if isinstance(prior, BetaPrior):
        return beta_posterior(counts, prior)
    return normal_gamma_posterior(counts, prior)


def sample_means(posteriors: Sequence[Posterior], rng: np.random.Generator,
                 draws: int) -> np.ndarray:
    """``draws`` samples of every arm's mean reward: an array of shape (draws, arms)."""
    arr = np.asarray(posteriors, dtype=float)
    if arr.shape[1] == 2:  # Beta
        return rng.beta(arr[:, 0], arr[:, 1], size=(draws, len(arr)))
    mu, kappa, alpha, beta = arr.T
    precision = rng.gamma(alpha, 1.0 / beta, size=(draws, len(arr)))
    return rng.normal(mu, 1.0 / np.sqrt(kappa * precision))


class ThompsonSampler:
    """One seeded generator for every random choice the engine makes; thread-safe."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def sample(self, posteriors: Sequence[Posterior]) -> np.ndarray:
        """One draw of each arm's mean reward."""
        return self.sample_many(posteriors, 1)[0]

    def sample_many(self, posteriors: Sequence[Posterior], draws: int) -> np.ndarray:
        with self._lock:
            return sample_means(posteriors, self._rng, draws)

    def integers(self, high: int, size: int | None = None) -> np.ndarray:
        with self._lock:
            return self._rng.integers(0, high, size=size)


# ---- bucketed statistics ---------------------------------------------------------------
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


# ---- reports ---------------------------------------------------------------------------
def win_probabilities(draws: np.ndarray) -> np.ndarray:
    """P(arm has the highest mean) for each column of a (draws, arms) sample matrix."""
    wins = np.bincount(np.argmax(draws, axis=1), minlength=draws.shape[1])
    return wins / draws.shape[0]


def expected_loss(draws: np.ndarray) -> np.ndarray:
    """E[max mean - this arm's mean]: what choosing each arm now is expected to cost."""
    return (draws.max(axis=1, keepdims=True) - draws).mean(axis=0)
