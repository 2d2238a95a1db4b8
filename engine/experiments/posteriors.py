"""Posteriors of arm rewards, and the statistics reports draw from them.

Binary rewards (click, conversion) have a Beta-Bernoulli posterior,
``Beta(alpha0 + successes, beta0 + trials - successes)``. Continuous rewards
(``reward: conversion.value``: revenue per impression, zero when nothing was
bought) have a Normal-Gamma posterior over the mean and precision, updated from
``n``, ``sum`` and ``sum of squares``; the arm's mean reward is Student-t
distributed. :func:`sample_means` draws every arm's mean in one NumPy call
(Thompson, 1933; Chapelle & Li, 2011).

>>> import numpy as np
>>> prior = BetaPrior(1, 1)
>>> arms = [posterior_of(ArmCounts(100, 60), prior), posterior_of(ArmCounts(100, 5), prior)]
>>> arms[0]
BetaPosterior(alpha=61.0, beta=41.0)
>>> draws = sample_means(arms, np.random.default_rng(7), 1)
>>> bool(draws[0, 0] > draws[0, 1])
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from dsl.ruleset import BetaPrior, NormalGammaPrior, Prior
from engine.records import ArmCounts


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


POOLED_KAPPA = 1.0
"""Pseudo-observations behind the pooled prior's mean (weak: one observation)."""
POOLED_ALPHA = 1.0
"""Shape of the pooled prior's precision (weak; its scale comes from the data)."""


def pooled_prior(prior: NormalGammaPrior, counts: Mapping[str, ArmCounts]) -> NormalGammaPrior:
    """A weakly-informative prior on the data's scale, from every arm's observations.

    Its mean is the pooled mean reward and its expected variance the pooled variance,
    each worth about one observation, so a posterior is always as wide as the data
    are noisy: a revenue arm that is twice as good is not locked out after the first
    sale of another (empirical Bayes; Gelman et al., *Bayesian Data Analysis*, 5.1).
    Before any observation, ``prior`` as written.

    >>> p = pooled_prior(NormalGammaPrior(pooled=True),
    ...                  {"a": ArmCounts(10, 30, 900), "b": ArmCounts(10, 0, 0)})
    >>> p.mu, p.beta
    (1.5, 42.75)
    """
    n = sum(c.trials for c in counts.values())
    if n <= 0:
        return prior
    mean = sum(c.successes for c in counts.values()) / n
    variance = sum(c.sum_sq for c in counts.values()) / n - mean * mean
    if variance <= 1e-12 * max(mean * mean, 1.0):  # one value seen so far: its own scale
        variance = mean * mean if mean else prior.beta / prior.alpha
    return NormalGammaPrior(mean, POOLED_KAPPA, POOLED_ALPHA, POOLED_ALPHA * variance)


def arms_prior(prior: Prior, arms: Sequence[str], counts: Mapping[str, ArmCounts]) -> Prior:
    """The prior the arms' posteriors start from: a pooled one set from the arms' data."""
    if isinstance(prior, NormalGammaPrior) and prior.pooled:
        return pooled_prior(prior, {a: counts[a] for a in arms if a in counts})
    return prior


def experiment_posteriors(prior: Prior, arms: Sequence[str],
                          counts: Mapping[str, ArmCounts]) -> tuple[Posterior, ...]:
    """Every arm's posterior, in ``arms`` order (a pooled prior is set from all arms)."""
    start = arms_prior(prior, arms, counts)
    return tuple(posterior_of(counts.get(arm), start) for arm in arms)


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


def win_probabilities(draws: np.ndarray) -> np.ndarray:
    """P(arm has the highest mean) for each column of a (draws, arms) sample matrix."""
    wins = np.bincount(np.argmax(draws, axis=1), minlength=draws.shape[1])
    return wins / draws.shape[0]


def expected_loss(draws: np.ndarray) -> np.ndarray:
    """E[max mean - this arm's mean]: what choosing each arm now is expected to cost."""
    return (draws.max(axis=1, keepdims=True) - draws).mean(axis=0)
