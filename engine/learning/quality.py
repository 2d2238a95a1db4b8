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
