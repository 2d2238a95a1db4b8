"""A customer's cluster features, and their learned clusters as rules read them.

The features of a ``cluster`` block are rule expressions over the profile, its events and
``now``; they are computed when a TrackEvent changes the profile (what the clusters learn,
through the log) and, lazily, when a decision's rules read ``cluster.NAME``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dsl.ruleset import ClusterSpec, Ruleset, ScoreSpec
from engine.decide.attributes import typed_attributes
from engine.records import Profile

if TYPE_CHECKING:  # River loads only where the models are built (the CLI stays light)
    from engine.learning.clusters import ClusterModels
    from engine.learning.scores import ScoreModels

log = logging.getLogger(__name__)


_NUMBER = (int, float)  # (a tuple: isinstance with ``int | float`` builds the union per call)


def feature_values(spec: ClusterSpec | ScoreSpec, args: tuple[Any, ...]) -> list[float | None]:
    """Each feature's value in ``spec.features`` order (None: unknown, or it failed) for
    the rules' arguments."""
    out: list[float | None] = []
    for fn in spec.fns:
        try:
            value = fn(*args)
        except Exception:  # bad stored data: the feature is unknown, never a crash
            log.exception("cluster %s feature %s failed", spec.name,
                          spec.features[len(out)])
            value = None
        out.append(float(value) if isinstance(value, _NUMBER) else None)
    return out


def features_of(spec: ClusterSpec | ScoreSpec, args: tuple[Any, ...]
                ) -> dict[str, float | None]:
    """Each feature's value by name (None: unknown, or it failed) for the rules' arguments."""
    return dict(zip(spec.features, feature_values(spec, args), strict=True))


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


def score_snapshot(ruleset: Ruleset, profile: Profile, now: float) -> dict[str, float]:
    """What the scores learn from a TrackEvent: each score's features (``NAME:feature``)
    and, for each event a label or target counts, the customer's ``@count:EVENT``,
    ``@total:EVENT`` and ``@last:EVENT`` after it (engine.learning.scores)."""
    args = profile_args(ruleset, profile, now)
    out: dict[str, float] = {}
    for spec in ruleset.scores.values():
        for feature, value in features_of(spec, args).items():
            if value is not None:
                out[f"{spec.name}:{feature}"] = value
        stats = profile.events.get(spec.event)
        out[f"@count:{spec.event}"] = float(stats.count) if stats else 0.0
        out[f"@total:{spec.event}"] = float(stats.total) if stats else 0.0
        out[f"@last:{spec.event}"] = float(stats.last_at) if stats else 0.0
    return out


class Assignments:
    """``cluster.NAME`` and ``score.NAME`` for one decision: computed on first read."""

    __slots__ = ("_args", "_clusters", "_done", "_ruleset", "_scores")

    def __init__(self, clusters: ClusterModels, scores: ScoreModels | None, ruleset: Ruleset,
                 args: tuple[Any, ...]) -> None:
        self._clusters, self._scores, self._ruleset, self._args = clusters, scores, ruleset, args
        self._done: dict[str, float | int | str | None] = {}

    def get(self, name: str) -> float | int | str | None:
        done = self._done
        if name in done:
            return done[name]
        kind, _, short = name.partition(".")
        value: float | int | str | None = None
        if kind == "cluster":
            spec = self._ruleset.clusters[short]
            if self._clusters.ready(spec):
                value = self._clusters.assign_values(spec, feature_values(spec, self._args))
        else:
            score = self._ruleset.scores[short]
            if self._scores is not None and self._scores.ready(score):
                value = self._scores.predict_values(score, feature_values(score, self._args))
        done[name] = value
        return value
