"""Propensity models: one River logistic regression per action, learning online.

Prior: before an action's model has learnt anything its propensity is the
action's ``prior`` (``0.05`` unless the ruleset says otherwise). The prior is not
a special case: each model's intercept starts at ``logit(prior)`` with zero
weights, so an untrained model predicts exactly the prior and feedback moves it
from there.

>>> models = PropensityModels()
>>> round(models.predict("offer", 0.05, {"seg:vip": 1.0}), 3)
0.05
>>> for _ in range(20):
...     models.learn("offer", 0.05, {"seg:vip": 1.0}, True)
>>> models.predict("offer", 0.05, {"seg:vip": 1.0}) > 0.05
True
"""

from __future__ import annotations

import math
import pickle
import threading
from collections.abc import Mapping

from river import compose, linear_model, optim, preprocessing

LEARNING_RATE = 0.05


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def new_model(prior: float) -> compose.Pipeline:
    """Standardised features into a logistic regression whose intercept is the prior."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(LEARNING_RATE),
        intercept_init=logit(prior),
        intercept_lr=LEARNING_RATE,
    )


class PropensityModels:
    """The per-action models, thread-safe; snapshots are pickles of the model map."""

    def __init__(self) -> None:
        self._models: dict[str, compose.Pipeline] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def predict(self, action_id: str, prior: float, features: Mapping[str, float]) -> float:
        model = self._models.get(action_id)
        if model is None:
            return prior
        with self._lock:
            return float(model.predict_proba_one(dict(features)).get(True, prior))

    def learn(self, action_id: str, prior: float, features: Mapping[str, float],
              label: bool) -> None:
        with self._lock:
            model = self._models.get(action_id)
            if model is None:
                model = self._models[action_id] = new_model(prior)
            model.learn_one(dict(features), label)
            self._seen[action_id] = self._seen.get(action_id, 0) + 1

    def examples_seen(self, action_id: str) -> int:
        return self._seen.get(action_id, 0)

    def snapshot(self) -> bytes:
        with self._lock:
            return pickle.dumps((self._models, self._seen), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        """Load a snapshot written by :meth:`snapshot` (trusted: our own store)."""
        models, seen = pickle.loads(blob)
        with self._lock:
            self._models, self._seen = models, seen
