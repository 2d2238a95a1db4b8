"""What a model sees: feature dicts, split and reshaped for each kind of learner.

One-hot features are named ``name=value`` and present only when true; every other
feature is a number that is always present.

>>> nominal({"context.device=mobile": 1.0, "profile.spend": 80.0})
{'context.device': 'mobile', 'profile.spend': 80.0}
>>> model_features(ModelSpec(per="placement"), "offer", {"segment:vip": 1.0})
{'action=offer': 1.0, 'segment:vip': 1.0, 'offer|segment:vip': 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsl.ruleset import ModelSpec


def is_indicator(name: str | int) -> bool:
    """One-hot features are named ``name=value``, present only when true.

    A hashed feature (an integer bucket, ``hashed:``) passes through unscaled too:
    buckets mix indicators, which a scaler would shrink to zero.
    """
    return not isinstance(name, str) or "=" in name


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
