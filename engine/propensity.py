"""Propensity models: River classifiers learning online, with progressive validation.

A placement's ``model`` block (:class:`dsl.ruleset.ModelSpec`) chooses the learner
(logistic regression by default, River's AdPredictor, or a Hoeffding tree),
whether there is one model per action or one per placement (the action then a
feature, crossed with every other feature), feature hashing, and online bagging.

Prior: an untrained logistic model predicts exactly the action's ``prior`` (its
intercept starts at ``logit(prior)`` with zero weights); AdPredictor starts from
it as its prior probability; a tree, or any model before its first example,
falls back to it.

Contextual exploration: with ``bagging: K`` the model is River's online bagging
(Oza & Russell, 2001: each member learns each example ``Poisson(1)`` times). A
decision samples one member and ranks with its predictions, which approximates
Thompson sampling over the model's uncertainty (the online bootstrap of Eckles &
Kaptein, 2014). The probability of the chosen action is the share of members
that would have chosen it, computed exactly.

Progressive validation: every example is first predicted, then learnt, so the
rolling ROC AUC and log loss over the last ``QUALITY_WINDOW`` examples measure
the model on data it had not seen (Blum, Kalai & Langford, 1999).

>>> models = PropensityModels()
>>> round(models.predict("offer", DEFAULT_MODEL, 0.05, {"seg:vip": 1.0}), 3)
0.05
>>> for _ in range(20):
...     models.learn("offer", DEFAULT_MODEL, 0.05, {"seg:vip": 1.0}, True)
>>> models.predict("offer", DEFAULT_MODEL, 0.05, {"seg:vip": 1.0}) > 0.05
True
"""

from __future__ import annotations

import math
import pickle
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from river import (
    ensemble,
    linear_model,
    metrics,
    optim,
    preprocessing,
    stats,
    tree,
    utils,
)

from dsl.ruleset import DEFAULT_MODEL, ModelSpec

__all__ = ["DEFAULT_MODEL", "ModelQuality", "PropensityModels"]

LEARNING_RATE = 0.05
QUALITY_WINDOW = 1000


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1.0 - p))


def new_learner(spec: ModelSpec, prior: float, key: str) -> Any:
    """The River pipeline a spec describes, starting from the prior."""
    learner: Any
    if spec.learner == "adpredictor":
        learner = linear_model.AdPredictor(prior_probability=prior)
    elif spec.learner == "tree":
        learner = tree.HoeffdingTreeClassifier(grace_period=50)
    else:
        learner = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(LEARNING_RATE),
            intercept_init=logit(prior),
            intercept_lr=LEARNING_RATE,
        )
    if spec.hashed:
        learner = preprocessing.FeatureHasher(n_features=spec.hashed, seed=1) | learner
    if spec.bagging:
        # the seed comes from the model's key: every replica bags identically
        learner = ensemble.BaggingClassifier(learner, n_models=spec.bagging,
                                             seed=zlib.crc32(key.encode()))
    return learner


def _proba(model: Any, features: dict[str, float], prior: float) -> float:
    proba = model.predict_proba_one(features)
    return float(proba.get(True, prior)) if proba else prior


def _rolling(kind: Any) -> Any:
    return utils.Rolling(kind, window_size=QUALITY_WINDOW)


@dataclass
class _Quality:
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


@dataclass
class _Model:
    spec: ModelSpec
    learner: Any
    examples: int = 0
    quality: _Quality = field(default_factory=_Quality)


def model_features(spec: ModelSpec, action_id: str, features: Mapping[str, float]
                   ) -> dict[str, float]:
    """Per-placement models see the action as a feature and crossed with every feature."""
    if spec.per == "action":
        return dict(features)
    out = {f"action={action_id}": 1.0}
    for name, value in features.items():
        out[name] = value
        out[f"{action_id}|{name}"] = value
    return out


class PropensityModels:
    """Every model by key (an action id, or ``@placement``); thread-safe, snapshottable."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()

    def predict(self, action_id: str, spec: ModelSpec, prior: float,
                features: Mapping[str, float], placement: str = "",
                member: int | None = None) -> float:
        """P(reward); ``member`` picks one bag member (exploration), else the bag's mean."""
        model = self._models.get(spec.key(placement, action_id))
        if model is None or model.examples == 0:
            return prior
        x = model_features(spec, action_id, features)
        with self._lock:
            learner = model.learner
            if member is not None and spec.bagging and model.spec == spec:
                learner = learner[member % len(learner)]
            return _proba(learner, x, prior)

    def learn(self, action_id: str, spec: ModelSpec, prior: float,
              features: Mapping[str, float], label: bool, placement: str = "") -> None:
        key = spec.key(placement, action_id)
        x = model_features(spec, action_id, features)
        with self._lock:
            model = self._models.get(key)
            if model is None or model.spec != spec:  # a new model, or the ruleset changed it
                model = self._models[key] = _Model(spec, new_learner(spec, prior, key))
            model.quality.update(label, _proba(model.learner, x, prior))
            model.learner.learn_one(x, label)
            model.examples += 1

    def examples_seen(self, key: str) -> int:
        model = self._models.get(key)
        return model.examples if model is not None else 0

    def quality(self) -> list[ModelQuality]:
        with self._lock:
            return [
                ModelQuality(
                    key,
                    m.spec.learner + (f" bagged x{m.spec.bagging}" if m.spec.bagging else ""),
                    m.examples, float(m.quality.auc.get()), float(m.quality.log_loss.get()),
                    float(m.quality.predicted.get()), float(m.quality.observed.get()))
                for key, m in sorted(self._models.items())]

    def snapshot(self) -> bytes:
        with self._lock:
            return pickle.dumps(self._models, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        """Load a snapshot written by :meth:`snapshot` (trusted: our own store)."""
        models = pickle.loads(blob)
        if not isinstance(models, dict):  # an older snapshot format: relearn from the log
            raise ValueError("unsupported model snapshot")
        with self._lock:
            self._models = models
