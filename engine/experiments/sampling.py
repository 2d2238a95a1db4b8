"""The one seeded random source of every choice the engine makes.

>>> from dsl.ruleset import BetaPrior
>>> from engine.experiments.posteriors import posterior_of
>>> sampler = ThompsonSampler(seed=7)
>>> sampler.sample([posterior_of(None, BetaPrior(1, 1))]).shape
(1,)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from engine.experiments.posteriors import Posterior, sample_means


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
