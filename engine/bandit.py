"""Thompson sampling over Beta-Bernoulli arms, vectorised with NumPy.

Each arm's reward rate has a Beta posterior: ``Beta(alpha0 + successes,
beta0 + trials - successes)``. A decision draws one sample per eligible arm in a
single ``Generator.beta`` call and plays the arm with the largest
``sample * value * weight`` (Thompson, 1933; Chapelle & Li, 2011, "An Empirical
Evaluation of Thompson Sampling"). The random source is seeded once, here.

>>> sampler = ThompsonSampler(seed=7)
>>> stats = {"a": ArmCounts(100, 60), "b": ArmCounts(100, 5)}
>>> posterior(stats["a"], 1, 1)
(61.0, 41.0)
>>> draws = sampler.sample([posterior(stats[k], 1, 1) for k in ("a", "b")])
>>> bool(draws[0] > draws[1])
True
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from engine.records import ArmCounts


def posterior(counts: ArmCounts | None, alpha0: float, beta0: float) -> tuple[float, float]:
    """Beta posterior parameters of an arm from its counts and the prior."""
    if counts is None:
        return (float(alpha0), float(beta0))
    successes = max(counts.successes, 0.0)
    failures = max(counts.trials - successes, 0.0)
    return (float(alpha0 + successes), float(beta0 + failures))


def posterior_mean(params: tuple[float, float]) -> float:
    alpha, beta = params
    return alpha / (alpha + beta)


class ThompsonSampler:
    """Draws Beta samples for a set of arms; one seeded generator, thread-safe."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def sample(self, params: Sequence[tuple[float, float]]) -> np.ndarray:
        """One draw from each ``Beta(alpha, beta)`` in ``params``."""
        arr = np.asarray(params, dtype=float).reshape(-1, 2)
        with self._lock:
            return self._rng.beta(arr[:, 0], arr[:, 1])
