"""The default learner's prediction from a copy of its parameters, without River's
pipeline machinery.

A decision predicts every candidate action (and, with ``bagging``, every member of every
action's bag) on each request; River's ``predict_proba_one`` on the logistic pipeline of
:func:`engine.learning.registry.logistic` walks a pipeline, a union and two function
transformers and copies the input four times for a dot product. :func:`parameters` copies
what that prediction reads (the scaler's means and deviations, the regression's weights and
intercept) once per change of the model, and :func:`probability` computes the same number
from it: the same operations in the same order, so the same float (tested against River
on trained models, ``tests/test_models.py``).

>>> from engine.learning.registry import logistic
>>> pipeline = logistic(0.2)
>>> for i in range(50):
...     pipeline.learn_one({"spend": float(i), "device=mobile": 1.0}, i % 3 == 0)
>>> x = {"spend": 12.0, "device=mobile": 1.0}
>>> probability(parameters(pipeline), x) == pipeline.predict_proba_one(x)[True]
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from river import linear_model, preprocessing


class LogisticParameters(NamedTuple):
    """What :func:`probability` reads: per numeric feature its mean and standard deviation
    (as the scaler divides by it), per feature its weight, and the intercept."""

    means: dict[str, float]
    deviations: dict[str, float]
    weights: dict[Any, float]
    intercept: float


def parameters(pipeline: Any) -> LogisticParameters | None:
    """A copy of a :func:`~engine.learning.registry.logistic` pipeline's parameters; None
    for any other shape (its predictions then go through River)."""
    try:
        union, regression = pipeline.steps.values()
        numeric, _indicators = union.transformers.values()
        _select, scaler = numeric.steps.values()
    except (AttributeError, ValueError, TypeError):
        return None
    if (type(regression) is not linear_model.LogisticRegression
            or type(scaler) is not preprocessing.StandardScaler
            or scaler.window_size is not None or not scaler.with_std):
        return None
    return LogisticParameters(
        dict(scaler.means), {k: v**0.5 for k, v in scaler.vars.items()},
        dict(regression._weights), float(regression.intercept))


Split = tuple[list[tuple[Any, float]], list[tuple[str, float]]]
"""An input's indicators and its numbers, each in the input's order."""


def split(x: Mapping[Any, float]) -> Split:
    """``x``'s indicators (one-hot ``name=value`` and hashed features) and its numbers:
    what the pipeline's union passes through and what it scales. Split once, predicted
    by every member of a bag."""
    indicators: list[tuple[Any, float]] = []
    numbers: list[tuple[str, float]] = []
    for k, v in x.items():
        if isinstance(k, str) and "=" not in k:
            numbers.append((k, v))
        else:
            indicators.append((k, v))
    return indicators, numbers


def probability(p: LogisticParameters, x: Mapping[Any, float], parts: Split | None = None
                ) -> float:
    """P(True | x): the indicators as they are, then the numbers scaled (River's union
    and scaler), dotted with the weights, plus the intercept, through River's sigmoid.
    ``parts``: :func:`split` of ``x``, when already made.

    >>> p = LogisticParameters({"a": 1.0}, {"a": 2.0}, {"a": 0.5, "b=1": 1.0}, 0.0)
    >>> round(probability(p, {"a": 5.0, "b=1": 1.0}), 4)  # 0.5 * (5 - 1) / 2 + 1 = 2
    0.8808
    """
    indicators, numbers = split(x) if parts is None else parts
    weights = p.weights
    z = 0.0
    for k, v in indicators:
        w = weights.get(k)
        if w is not None:
            z += w * v
    means, deviations = p.means, p.deviations
    for k, v in numbers:
        w = weights.get(k)
        if w is not None:
            sd = deviations.get(k, 0.0)
            z += w * ((v - means.get(k, 0.0)) / sd if sd else 0.0)
    z += p.intercept
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1 / (1 + math.exp(-z))
