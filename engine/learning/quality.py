"""Progressive validation: each example is predicted before it is learnt.

So the rolling ROC AUC and log loss over the last :data:`QUALITY_WINDOW` examples
measure a model on data it had not seen (Blum, Kalai & Langford, 1999).

>>> q = RollingQuality()
>>> for label, p in [(True, 0.9), (False, 0.2), (True, 0.7), (False, 0.4)]:
...     q.update(label, p)
>>> float(q.auc.get()), q.observed.get()
(1.0, 0.5)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from river import metrics, stats, utils

QUALITY_WINDOW = 1000


def _rolling(kind: Any) -> Any:
    return utils.Rolling(kind, window_size=QUALITY_WINDOW)


@dataclass
class RollingQuality:
    """Progressive-validation metrics of one model."""

    auc: Any = field(default_factory=lambda: _rolling(metrics.ROCAUC))
    log_loss: Any = field(default_factory=lambda: _rolling(metrics.LogLoss))
    predicted: Any = field(default_factory=lambda: _rolling(stats.Mean))
    observed: Any = field(default_factory=lambda: _rolling(stats.Mean))

    def measures(self) -> tuple[float, float, float, float]:
        """(ROC AUC, log loss, mean prediction, observed rate) over the window: NaN, for
        "not measured", while no final label is in it (River reports 0), and the AUC while
        the window holds one class only (undefined).

        >>> RollingQuality().measures()
        (nan, nan, nan, nan)
        """
        nan = float("nan")
        if not self.observed.window:
            return nan, nan, nan, nan
        rate = float(self.observed.get())
        auc = float(self.auc.get()) if 0.0 < rate < 1.0 else nan
        return auc, float(self.log_loss.get()), float(self.predicted.get()), rate

    def update(self, label: bool, p: float) -> None:
        self.auc.update(label, p)
        self.log_loss.update(label, p)
        self.predicted.update(p)
        self.observed.update(float(label))


@dataclass(frozen=True)
class ModelQuality:
    model: str
    learner: str
    examples: int
    rolling_auc: float
    rolling_log_loss: float
    mean_predicted: float
    observed_rate: float
    # other models' own measures; a propensity model's features at their vocabulary
    # limit as ``pooled:NAME`` -> the values admitted (engine.learning.vocabulary)
    metrics: dict[str, float] = field(default_factory=dict)

    def own_metrics(self) -> dict[str, float]:
        """The measures of a model measured its own way (the recommender, clusters,
        scores); empty for a propensity model (AUC and the rest)."""
        return {k: v for k, v in self.metrics.items() if not k.startswith(POOLED)}

    def pooled(self) -> list[str]:
        """The features whose later values share one weight."""
        return [k[len(POOLED):] for k in self.metrics if k.startswith(POOLED)]


POOLED = "pooled:"


def _pseudonym(key: tuple[str, str]) -> bytes:
    return hashlib.blake2b(f"{key[0]}:{key[1]}".encode(), digest_size=12).digest()


MAX_AWAITING = 100_000
"""Shown actions whose final label the quality metrics wait for, at most (then sampled)."""


class FinalLabels:
    """Predictions waiting for their final label, for progressive validation.

    Training does not wait (delayed feedback is learnt with fake negatives), but the
    quality metrics must compare a prediction with the *final* label: a click, or no
    click within the reward wait. Entries are kept in arrival order and expire from
    the front, so each event costs O(1) amortised however many are waiting; beyond
    :data:`MAX_AWAITING` new impressions are not tracked (the metrics become a sample).

    >>> labels = FinalLabels()
    >>> labels.shown(("d1", "a"), "a", 0.2, at=0.0)
    >>> labels.shown(("d2", "a"), "a", 0.3, at=1.0)
    >>> labels.rewarded(("d1", "a"))
    >>> labels.expire(before=0.5)
    [('a', True, 0.2)]
    """

    def __init__(self, limit: int = MAX_AWAITING) -> None:
        self.limit = limit
        # hash of (decision, action) -> (shown at, model key, prediction, rewarded); hashed so
        # that snapshots of it hold no decision id (ForgetProfile leaves nothing behind); a
        # tuple of atoms, which the cyclic collector stops tracking (up to ``limit`` of them:
        # a list each would be walked at every full collection). Snapshots before format 3
        # hold lists, read the same way.
        self.waiting: OrderedDict[bytes, Sequence[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.waiting)

    def shown(self, key: tuple[str, str], model: str, predicted: float, at: float) -> None:
        name = _pseudonym(key)
        if name not in self.waiting and len(self.waiting) < self.limit:
            self.waiting[name] = (at, model, predicted, False)

    def rewarded(self, key: tuple[str, str]) -> None:
        name = _pseudonym(key)
        entry = self.waiting.get(name)
        if entry is not None:  # (a key set again keeps its place in the order)
            self.waiting[name] = (*entry[:3], True)

    def expire(self, before: float) -> list[tuple[str, bool, float]]:
        """(model, final label, prediction) of every entry shown before ``before``."""
        done = []
        while self.waiting:
            key, (at, model, predicted, rewarded) = next(iter(self.waiting.items()))
            if at >= before:
                break
            del self.waiting[key]
            done.append((model, bool(rewarded), float(predicted)))
        return done
