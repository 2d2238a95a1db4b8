"""A customer's cluster features, and their learned clusters as rules read them.

The features of a ``cluster`` block are rule expressions over the profile, its events and
``now``; they are computed when a TrackEvent changes the profile (what the clusters learn,
through the log) and, lazily, when a decision's rules read ``cluster.NAME``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dsl.ruleset import ClusterSpec, Ruleset
from engine.decide.attributes import typed_attributes
from engine.records import Profile

if TYPE_CHECKING:  # River loads only where the models are built (the CLI stays light)
    from engine.learning.clusters import ClusterModels

log = logging.getLogger(__name__)


def features_of(spec: ClusterSpec, args: tuple[Any, ...]) -> dict[str, float | None]:
    """Each feature's value (None: unknown, or it failed) for the rules' arguments."""
    out: dict[str, float | None] = {}
    for name, fn in zip(spec.features, spec.fns, strict=True):
        try:
            value = fn(*args)
        except Exception:  # bad stored data: the feature is unknown, never a crash
            log.exception("cluster %s feature %s failed", spec.name, name)
            value = None
        out[name] = float(value) if isinstance(value, int | float) else None
    return out


def profile_args(ruleset: Ruleset, profile: Profile, now: float) -> tuple[Any, ...]:
    """The rules' arguments for a profile outside a decision (no context, no segments)."""
    attributes = dict(ruleset.attribute_defaults)
    attributes.update(typed_attributes(ruleset.profile_schema, profile.attributes))
    attributes.update(user_id=profile.user_id, known=True, first_seen=profile.first_seen,
                      last_seen=profile.last_seen)
    return (attributes, dict(ruleset.context_defaults), profile.events, {}, now)


def logged_features(ruleset: Ruleset, profile: Profile, now: float) -> dict[str, float]:
    """Every cluster's features as a learning-log entry carries them: ``NAME/feature``;
    unknown features are left out."""
    args = profile_args(ruleset, profile, now)
    out: dict[str, float] = {}
    for spec in ruleset.clusters.values():
        for feature, value in features_of(spec, args).items():
            if value is not None:
                out[f"{spec.name}/{feature}"] = value
    return out


class Assignments:
    """``cluster.NAME`` for one decision: computed on first read, then kept."""

    __slots__ = ("_args", "_done", "_models", "_specs")

    def __init__(self, models: ClusterModels, specs: Mapping[str, ClusterSpec],
                 args: tuple[Any, ...]) -> None:
        self._models, self._specs, self._args = models, specs, args
        self._done: dict[str, int | str | None] = {}

    def get(self, name: str) -> int | str | None:
        if name not in self._done:
            spec = self._specs[name]
            self._done[name] = self._models.assign(spec, features_of(spec, self._args))
        return self._done[name]
