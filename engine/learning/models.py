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

Learners come from :mod:`engine.learning.registry`; every example is predicted
before it is learnt, for the rolling quality of :mod:`engine.learning.quality`.

>>> models = PropensityModels()
>>> round(models.predict("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}), 3)
0.05
>>> for _ in range(20):
...     _ = models.learn("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}, True)
>>> models.predict("offer", DEFAULT_MODEL, 0.05, {"segment:vip": 1.0}) > 0.05
True
"""

from __future__ import annotations

import functools
import pickle
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy import stats as scipy_stats

from dsl.ruleset import DEFAULT_MODEL, ModelSpec
from engine.learning.features import model_features
from engine.learning.linear import LogisticParameters, parameters, probability, split
from engine.learning.quality import POOLED, ModelQuality, RollingQuality
from engine.learning.registry import LEARNERS, new_learner
from engine.learning.vocabulary import Vocabulary

__all__ = ["DEFAULT_MODEL", "ModelQuality", "PropensityModels"]

COLD_START_STRENGTH = 2.0
"""Pseudo-examples behind the cold-start prior of a bagged model (weak on purpose)."""
COLD_START_EXAMPLES = 20
"""A bagged model predicts from its cold-start prior until it has learnt this many."""


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


@functools.lru_cache(maxsize=4096)
def cold_start_bag(action_id: str, prior: float, members: int) -> tuple[float, ...]:
    """Every member's cold-start prediction for the action, in member order: what
    :meth:`PropensityModels.predict` answers for each before the model has data."""
    order = cold_start_order(action_id, members)
    quantiles = cold_start_quantiles(prior, members)
    return tuple(quantiles[order[k]] for k in range(members))


def _proba(model: Any, features: dict[str, float], prior: float) -> float:
    proba = model.predict_proba_one(features)
    return float(proba.get(True, prior)) if proba else prior


@dataclass
class _Model:
    spec: ModelSpec
    learner: Any
    examples: int = 0
    quality: RollingQuality = field(default_factory=RollingQuality)
    changes: int = 0  # learn_one calls: what the kept parameters are current for
    # (changes, each member's parameters or None: predicted through River), kept between
    # decisions; a cache, never pickled
    fast: tuple[int, list[LogisticParameters] | None] | None = field(
        default=None, compare=False, repr=False)
    # the one-hot values it gives weights of their own (engine.learning.vocabulary);
    # None when hashed (its buckets bound it)
    vocabulary: Vocabulary | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.vocabulary is None and not self.spec.hashed:
            self.vocabulary = Vocabulary(self.spec.vocabulary)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "fast": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # older snapshots: no changes counted, no vocabulary (one starts now)
        self.__dict__.update({"changes": 0, "vocabulary": None, **state, "fast": None})
        self.__post_init__()

    def seen(self, features: Mapping[str, float]) -> Mapping[str, float]:
        """``features`` as the model predicts from them (values it never admitted, of a
        feature at its limit, read the pooled weight)."""
        vocabulary = self.vocabulary
        return features if vocabulary is None else vocabulary.seen(features)

    def parameters(self) -> list[LogisticParameters] | None:
        """Each member's parameters (one for an unbagged model), when every member is
        the default logistic pipeline; else None. Call under the models' lock."""
        fast = self.fast
        if fast is None or fast[0] != self.changes:
            members: list[LogisticParameters] | None = None
            if self.spec.learner == "logistic" and not self.spec.hashed:
                members = []
                for member in self.learner if self.spec.bagging else (self.learner,):
                    p = parameters(member)
                    if p is None:
                        members = None
                        break
                    members.append(p)
            fast = (self.changes, members)
            self.fast = fast
        return fast[1]


def _pooled(vocabulary: Vocabulary | None) -> dict[str, float]:
    """``pooled:NAME`` -> values admitted, for each feature at its limit."""
    if vocabulary is None:
        return {}
    return {f"{POOLED}{name}": float(len(vocabulary.values[name]))
            for name in sorted(vocabulary.full)}


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
            return cold_start_bag(action_id, prior, spec.bagging)[member % spec.bagging]
        if model is None or examples == 0:
            return prior
        x = model_features(spec, action_id, model.seen(features))
        members = self._parameters(model) if model.spec == spec else None
        if members is not None and (member is not None or not spec.bagging):
            return probability(members[member % len(members) if member is not None else 0], x)
        with self._lock:
            learner = model.learner
            if member is not None and spec.bagging and model.spec == spec:
                learner = learner[member % len(learner)]
            return _proba(learner, x, prior)

    def predict_bag(self, action_id: str, spec: ModelSpec, prior: float,
                    features: Mapping[str, float], placement: str = "") -> list[float]:
        """Every bag member's P(reward), in member order (features encoded once)."""
        model = self._models.get(spec.key(placement, action_id))
        if model is None or model.examples < COLD_START_EXAMPLES:
            return list(cold_start_bag(action_id, prior, spec.bagging))
        if model.spec != spec:
            return [self.predict(action_id, spec, prior, features, placement, k)
                    for k in range(spec.bagging)]
        x = model_features(spec, action_id, model.seen(features))
        members = self._parameters(model)
        if members is not None:
            parts = split(x)
            return [probability(p, x, parts) for p in members]
        with self._lock:
            return [_proba(member, x, prior) for member in model.learner]

    def _parameters(self, model: _Model) -> list[LogisticParameters] | None:
        """The model's kept parameters (:mod:`engine.learning.linear`), copied again
        under the lock after it learnt; read without the lock otherwise."""
        fast = model.fast
        if fast is not None and fast[0] == model.changes:
            return fast[1]
        with self._lock:
            return model.parameters()

    def learn(self, action_id: str, spec: ModelSpec, prior: float,
              features: Mapping[str, float], label: bool, placement: str = "", *,
              weight: Callable[[float], float] | None = None, draw: float = 0.0,
              new_example: bool = True) -> float:
        """Learn one example; returns the model's prediction for it before learning.

        ``weight`` maps that prediction to the example's importance weight (delayed
        feedback, :mod:`engine.learning.delayed`). A learner without weights learns the
        example ``floor(w)`` times, once more when ``draw`` (uniform in [0, 1), the
        same on every replica) is below the fraction. ``new_example`` is False for a
        second label of an example already counted (the positive after its impression).
        """
        key = spec.key(placement, action_id)
        with self._lock:
            model = self._models.get(key)
            if model is None or model.spec != spec:  # a new model, or the ruleset changed it
                model = self._models[key] = _Model(spec, new_learner(spec, prior, key))
            vocabulary = model.vocabulary
            if vocabulary is not None and vocabulary.limit != spec.vocabulary:
                vocabulary.resize(spec.vocabulary)  # `vocabulary:` changed: keep the rest
                model.spec = spec
            admitted = features if vocabulary is None else vocabulary.admit(features, key)
            x = model_features(spec, action_id, admitted)
            before = _proba(model.learner, x, prior)
            w = weight(before) if weight is not None else 1.0
            if LEARNERS[spec.learner].weighted:
                model.learner.learn_one(x, label, w=w)
            else:
                for _ in range(int(w) + (1 if draw < w - int(w) else 0)):
                    model.learner.learn_one(x, label)
            model.examples += int(new_example)
            model.changes += 1
            return before

    def record_quality(self, key: str, label: bool, predicted: float) -> None:
        """Progressive validation: a prediction made before learning, and its final label."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                model.quality.update(label, predicted)

    def examples_seen(self, key: str) -> int:
        model = self._models.get(key)
        return model.examples if model is not None else 0

    def quality(self) -> list[ModelQuality]:
        with self._lock:
            return [
                ModelQuality(
                    key,
                    m.spec.learner + (f" bagged x{m.spec.bagging}" if m.spec.bagging else ""),
                    m.examples, *m.quality.measures(), _pooled(m.vocabulary))
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
