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
that would have chosen it, computed exactly. Until an action's model has
``COLD_START_EXAMPLES`` examples its members spread around the prior
(:func:`cold_start_quantiles`), so untried actions are explored too.

Progressive validation: every example is first predicted, then learnt, so the
rolling ROC AUC and log loss over the last ``QUALITY_WINDOW`` examples measure
the model on data it had not seen (Blum, Kalai & Langford, 1999).

>>> models = PropensityModels()
>>> round(models.predict("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}), 3)
0.05
>>> for _ in range(20):
...     models.learn("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}, True)
>>> models.predict("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}) > 0.05
True
"""

from __future__ import annotations

import functools
import math
import pickle
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from river import (
    compose,
    ensemble,
    linear_model,
    metrics,
    optim,
    preprocessing,
    stats,
    tree,
    utils,
)
from scipy import stats as scipy_stats

from dsl.ruleset import DEFAULT_MODEL, ModelSpec

__all__ = ["DEFAULT_MODEL", "ModelQuality", "PropensityModels"]

LEARNING_RATE = 0.05
COLD_START_STRENGTH = 2.0
"""Pseudo-examples behind the cold-start prior of a bagged model (weak on purpose)."""
COLD_START_EXAMPLES = 20
"""A bagged model predicts from its cold-start prior until it has learnt this many."""
QUALITY_WINDOW = 1000


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1.0 - p))


def is_indicator(name: str) -> bool:
    """One-hot features are named ``name=value``, present only when true."""
    return "=" in name


def numeric_part(x: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in x.items() if not is_indicator(k)}


def indicator_part(x: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in x.items() if is_indicator(k)}


def nominal(x: dict[str, Any]) -> dict[str, Any]:
    """``{"device=mobile": 1}`` as ``{"device": "mobile"}``; a list's indicators stay."""
    indicators = [k.partition("=") for k in x if is_indicator(k)]
    single = {n for n, _, _ in indicators if sum(1 for m, _, _ in indicators if m == n) == 1}
    out: dict[str, Any] = {}
    for k, v in x.items():
        name, _, value = k.partition("=")
        if name in single:
            out[name] = value
        else:
            out[k] = v
    return out


def new_learner(spec: ModelSpec, prior: float, key: str) -> Any:
    """The River pipeline a spec describes, starting from the prior."""
    learner: Any
    if spec.learner == "adpredictor":
        learner = linear_model.AdPredictor(prior_probability=prior)
    elif spec.learner == "tree":
        # a tree splits on a nominal value directly; an indicator it only ever sees as 1
        learner = compose.FuncTransformer(nominal) | tree.HoeffdingTreeClassifier(
            grace_period=50, leaf_prediction="mc")  # leaf frequencies: calibrated
    else:
        # scale numbers only: a one-hot indicator is present (1) or absent, and
        # StandardScaler sees it only when present, so it would scale it to 0
        scaled = compose.FuncTransformer(numeric_part) | preprocessing.StandardScaler()
        learner = (scaled + compose.FuncTransformer(indicator_part)) | (
            linear_model.LogisticRegression(
                optimizer=optim.SGD(LEARNING_RATE),
                intercept_init=logit(prior),
                intercept_lr=LEARNING_RATE,
            ))
    if spec.hashed:
        learner = preprocessing.FeatureHasher(n_features=spec.hashed, seed=1) | learner
    if spec.bagging:
        # the seed comes from the model's key: every replica bags identically
        learner = ensemble.BaggingClassifier(learner, n_models=spec.bagging,
                                             seed=zlib.crc32(key.encode()))
    return learner


@functools.lru_cache(maxsize=1024)
def cold_start_quantiles(prior: float, members: int) -> tuple[float, ...]:
    """What each bag member predicts before the model has any data.

    A bag of untrained members would all say ``prior``: no uncertainty, so an
    action nobody has tried would never be explored. Instead member ``k`` takes the
    ``(k + 0.5) / K`` quantile of ``Beta(COLD_START_STRENGTH * prior,
    COLD_START_STRENGTH * (1 - prior))``, a weak prior centred on ``prior``.

    >>> q = cold_start_quantiles(0.05, 4)
    >>> q[0] < 0.05 < q[-1]
    True
    """
    a, b = COLD_START_STRENGTH * prior, COLD_START_STRENGTH * (1.0 - prior)
    qs = scipy_stats.beta.ppf([(k + 0.5) / members for k in range(members)], a, b)
    return tuple(float(q) for q in qs)


@functools.lru_cache(maxsize=4096)
def cold_start_order(action_id: str, members: int) -> tuple[int, ...]:
    """A fixed per-action permutation of the quantiles, so actions are not in lockstep."""
    return tuple(sorted(range(members),
                        key=lambda k: zlib.crc32(f"{action_id}:{k}".encode())))


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
    """Per-placement models see the action as a feature; linear ones also crossed with
    every feature (a tree finds such interactions itself)."""
    if spec.per == "action":
        return dict(features)
    out = {f"action={action_id}": 1.0, **features}
    if spec.learner != "tree":
        for name, value in features.items():
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
        examples = model.examples if model is not None else 0
        if member is not None and spec.bagging and examples < COLD_START_EXAMPLES:
            order = cold_start_order(action_id, spec.bagging)
            return cold_start_quantiles(prior, spec.bagging)[order[member % spec.bagging]]
        if model is None or examples == 0:
            return prior
        x = model_features(spec, action_id, features)
        with self._lock:
            learner = model.learner
            if member is not None and spec.bagging and model.spec == spec:
                learner = learner[member % len(learner)]
            return _proba(learner, x, prior)

    def predict_bag(self, action_id: str, spec: ModelSpec, prior: float,
                    features: Mapping[str, float], placement: str = "") -> list[float]:
        """Every bag member's P(reward), in member order (features encoded once)."""
        model = self._models.get(spec.key(placement, action_id))
        if model is None or model.examples < COLD_START_EXAMPLES or model.spec != spec:
            return [self.predict(action_id, spec, prior, features, placement, k)
                    for k in range(spec.bagging)]
        x = model_features(spec, action_id, features)
        with self._lock:
            return [_proba(member, x, prior) for member in model.learner]

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
