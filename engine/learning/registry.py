"""Learners by name: the ``learner:`` of a ``model`` block → a River pipeline.

Adding a learner is one entry in :data:`LEARNERS` (and its name in
``dsl.vocabulary.LEARNERS``, which the checker accepts). Every learner predicts
``predict_proba_one`` and learns ``learn_one``; :func:`new_learner` wraps it in
feature hashing and online bagging when the spec asks for them.

>>> from dsl.ruleset import ModelSpec
>>> sorted(LEARNERS)
['adpredictor', 'logistic', 'tree']
>>> type(new_learner(ModelSpec(bagging=4), 0.05, "offer")).__name__
'BaggingClassifier'
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from river import compose, ensemble, linear_model, optim, preprocessing, tree

from dsl.ruleset import ModelSpec
from engine.learning.features import indicator_part, nominal, numeric_part

LEARNING_RATE = 0.05

LearnerFactory = Callable[[float], Any]
"""prior -> an untrained River classifier that starts from that prior."""


@dataclass(frozen=True)
class LearnerKind:
    """A learner by name: its factory, and whether its ``learn_one`` takes a weight ``w``
    (importance weights, :mod:`engine.learning.delayed`; without it a weight is applied
    by learning an example ``floor(w)`` or ``ceil(w)`` times, at random)."""

    new: LearnerFactory
    weighted: bool = True


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1.0 - p))


def logistic(prior: float) -> Any:
    """Logistic regression, intercept at ``logit(prior)``: untrained, it predicts the prior.

    Numbers are scaled, indicators pass through: StandardScaler only sees an
    indicator when it is 1, so it would scale every indicator to 0.
    """
    scaled = compose.FuncTransformer(numeric_part) | preprocessing.StandardScaler()
    return (scaled + compose.FuncTransformer(indicator_part)) | linear_model.LogisticRegression(
        optimizer=optim.SGD(LEARNING_RATE),
        intercept_init=logit(prior),
        intercept_lr=LEARNING_RATE,
    )


def adpredictor(prior: float) -> Any:
    """Bayesian probit regression (Graepel et al., 2010), starting at the prior."""
    return linear_model.AdPredictor(prior_probability=prior)


def hoeffding_tree(prior: float) -> Any:
    """A Hoeffding tree over nominal values; leaf frequencies keep it calibrated."""
    return compose.FuncTransformer(nominal) | tree.HoeffdingTreeClassifier(
        grace_period=50, leaf_prediction="mc")


LEARNERS: dict[str, LearnerKind] = {
    "logistic": LearnerKind(logistic),
    "adpredictor": LearnerKind(adpredictor, weighted=False),
    "tree": LearnerKind(hoeffding_tree),
}


def new_learner(spec: ModelSpec, prior: float, key: str) -> Any:
    """The River pipeline a spec describes, starting from the prior."""
    learner = LEARNERS[spec.learner].new(prior)
    if spec.hashed:
        learner = preprocessing.FeatureHasher(n_features=spec.hashed, seed=1) | learner
    if spec.bagging:
        # the seed comes from the model's key: every replica bags identically
        learner = ensemble.BaggingClassifier(learner, n_models=spec.bagging,
                                             seed=zlib.crc32(key.encode()))
    return learner
