"""What a model sees: feature dicts, split and reshaped for each kind of learner.

One-hot features are named ``name=value`` and present only when true; every other
feature is a number that is always present.

>>> nominal({"context.device=mobile": 1.0, "profile.spend": 80.0})
{'context.device': 'mobile', 'profile.spend': 80.0}
>>> model_features(ModelSpec(per="placement"), "offer", {"segment:vip": 1.0})
{'action=offer': 1.0, 'segment:vip': 1.0, 'offer|segment:vip': 1.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dsl.ruleset import ModelSpec


def is_indicator(name: str | int) -> bool:
    """One-hot features are named ``name=value``, present only when true.

    A hashed feature (an integer bucket, ``hashed:``) passes through unscaled too:
    buckets mix indicators, which a scaler would shrink to zero.
    """
    return not isinstance(name, str) or "=" in name


class ModelInput(dict[str, float]):
    """One model input (:func:`model_features`) that remembers its split into numbers and
    indicators: each member of a bag runs its own pipeline on the same input, and would
    otherwise split it again. The input and its parts are read, never changed, by the
    pipelines (River's transformers return new dicts)."""

    __slots__ = ("_indicators", "_numeric")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._numeric: dict[str, float] | None = None
        self._indicators: dict[str, float] | None = None


def numeric_part(x: dict[str, float]) -> dict[str, float]:
    """The features that are numbers (:func:`is_indicator` inlined: every bag member of
    every candidate calls this).

    >>> numeric_part({"spend": 3.0, "device=mobile": 1.0, 17: 1.0})
    {'spend': 3.0}
    """
    return _part(x, "_numeric", _numbers)


def indicator_part(x: dict[str, float]) -> dict[str, float]:
    """The one-hot and hashed features (the complement of :func:`numeric_part`).

    >>> indicator_part({"spend": 3.0, "device=mobile": 1.0, 17: 1.0})
    {'device=mobile': 1.0, 17: 1.0}
    """
    return _part(x, "_indicators", _indicators)


def _part(x: dict[str, float], slot: str, split: Callable[[Mapping[Any, float]],
                                                           dict[str, float]]
          ) -> dict[str, float]:
    """``split(x)``, remembered in ``x``'s ``slot`` when ``x`` is a :class:`ModelInput`."""
    if type(x) is not ModelInput:
        return split(x)
    part: dict[str, float] | None = getattr(x, slot)
    if part is None:
        part = split(x)
        setattr(x, slot, part)
    return part


def _numbers(x: Mapping[Any, float]) -> dict[str, float]:
    return {k: v for k, v in x.items() if isinstance(k, str) and "=" not in k}


def _indicators(x: Mapping[Any, float]) -> dict[str, float]:
    return {k: v for k, v in x.items() if not isinstance(k, str) or "=" in k}


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


def model_features(spec: ModelSpec, action_id: str, features: Mapping[str, float]
                   ) -> ModelInput:
    """Per-placement models see the action as a feature; linear ones also crossed with
    every feature (a tree finds such interactions itself)."""
    if spec.per == "action":
        return ModelInput(features)
    out = ModelInput({f"action={action_id}": 1.0, **features})
    if spec.learner != "tree":
        for name, value in features.items():
            out[f"{action_id}|{name}"] = value
    return out
