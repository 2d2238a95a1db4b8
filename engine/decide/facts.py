"""The values rules read, the customer's segments, and the features models see."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dsl.ruleset import ModelSpec, Ruleset
from dsl.vocabulary import CLUSTERS_ATTRIBUTE as CLUSTERS
from dsl.vocabulary import POPULATION_ATTRIBUTE as POPULATION
from dsl.vocabulary import SEND_TIME_ATTRIBUTE as SEND_TIME
from engine.decide.attributes import typed_attributes
from engine.decide.clusters import Assignments
from engine.decide.inputs import DecideInput
from engine.decide.send_time import NO_PRIOR, Prior, SendTime
from engine.decide.tracer import Tracer
from engine.records import Profile

log = logging.getLogger(__name__)

@dataclass(slots=True)
class Facts:
    """The values rules read: the arguments of every compiled function."""

    attributes: dict[str, Any]
    context: dict[str, Any]
    events: Mapping[str, Any]
    segments: dict[str, bool]
    now: float
    # recommend(): the catalogue and the learnt recommender, the customer's pseudonym,
    # and each action's items once computed (engine.decide.recommend)
    recommendations: Any = None
    profile: Profile | None = None
    user_key: str = ""
    recommended: dict[str, Any] = field(default_factory=dict)
    # a group's or the channel's contacts in its cap's window (engine.decide.eligibility)
    shared_counts: dict[str, int] = field(default_factory=dict)
    _args: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._args = (self.attributes, self.context, self.events, self.segments, self.now)

    def args(self) -> tuple[Any, ...]:
        """The compiled functions' arguments (A, C, E, S, now): the same tuple for the
        whole decision (the dicts in it fill as the decision goes)."""
        return self._args

    def close(self) -> None:
        """Drop the learnt clusters' reader, the decision's one reference cycle
        (attributes → :class:`Assignments` → the arguments → attributes), so that what
        the decision read goes with it by reference counting rather than waiting for a
        pass of the cyclic collector (a decision made ~11 such objects; each pass walks
        them, and those that survive one are walked again by the older generations)."""
        self.attributes.pop(CLUSTERS, None)


def build_facts(ruleset: Ruleset, profile: Profile | None, req: DecideInput,
                population: Prior = NO_PRIOR, percentiles: object = None,
                recommendations: object = None, clusters: object = None,
                scores: object = None) -> Facts:
    """Defaults, then the stored profile, then built-ins; the request's context likewise.

    ``population`` is the population's engagement by hour of the week: with it the
    attributes carry the customer's :class:`SendTime` under ``SEND_TIME`` (a key no
    rule can name; ``best_send_hour()`` reads it); ``percentiles`` (the population's
    statistics, engine.decide.population) likewise, for ``percentile()``."""
    attributes = dict(ruleset.attribute_defaults)
    if profile is not None:
        attributes.update(typed_attributes(ruleset.profile_schema, profile.attributes))
    attributes["user_id"] = req.user_id
    attributes["known"] = profile is not None
    attributes["first_seen"] = profile.first_seen if profile else None
    attributes["last_seen"] = profile.last_seen if profile else None
    attributes[SEND_TIME] = SendTime(profile.engagement if profile else {}, population,
                                     attributes.get("timezone"))
    attributes[POPULATION] = percentiles
    context = dict(ruleset.context_defaults)
    context.update(req.context)
    context["placement"] = req.placement.name
    context["channel"] = req.channel
    events = profile.events if profile is not None else {}
    facts = Facts(attributes, context, events, {}, req.now)
    if clusters is not None and (ruleset.clusters or ruleset.scores):
        attributes[CLUSTERS] = Assignments(clusters, scores, ruleset,  # type: ignore[arg-type]
                                           facts.args())
    if recommendations is not None:
        facts.recommendations = recommendations
        facts.profile = profile
    return facts


def evaluate_segments(ruleset: Ruleset, facts: Facts, tracer: Tracer) -> None:
    """Each segment once, in dependency order.

    A customer is in a segment or not: a condition that is null (missing data) or
    fails to evaluate means "not in it", so segments are plain booleans wherever
    other rules use them (the checker types them so, and ``not`` relies on it).
    """
    args = facts.args()
    segments = facts.segments
    for segment in ruleset.segments:
        try:
            segments[segment.name] = segment.fn(*args) is True
        except Exception:  # a bug or bad stored data: never crash, never match
            log.exception("segment %s failed at %s", segment.name, segment.pos)
            segments[segment.name] = False
    if tracer.enabled:
        for segment in ruleset.segments:
            tracer.segment(segment, segments[segment.name])


def features_of(facts: Facts, spec: ModelSpec, private: frozenset[str] = frozenset()
                ) -> dict[str, float]:
    """Model features: numbers as they are, bools and segments 0/1, strings and lists one-hot.

    One-hot features are named ``name=value`` and present only when true; every
    other feature is always present.

    The default model (no ``features:``) reads every segment flag and context value but
    those named in ``private`` (declared ``pii``: a customer's email one-hot would be a
    feature named after it, in every record and snapshot).
    """
    if spec.features is None:
        features = {f"segment:{name}": 1.0 if hit else 0.0
                    for name, hit in facts.segments.items()}
        for key, value in facts.context.items():
            if not private or key not in private:
                _encode(features, f"context.{key}", value)
        return features
    features = {}
    for name in spec.features:
        if name == "segments":
            features.update({f"segment:{s}": 1.0 if hit else 0.0
                             for s, hit in facts.segments.items()})
            continue
        head, _, attr = name.partition(".")
        source = facts.attributes if head == "profile" else facts.context
        _encode(features, name, source.get(attr))
    return features


_NUMBER = (int, float)  # (``int | float`` would build a union object per call)


def _encode(features: dict[str, float], name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        features[name] = 1.0 if value else 0.0
    elif isinstance(value, _NUMBER):
        features[name] = float(value)
    elif isinstance(value, list):
        for item in value:
            features[f"{name}={item}"] = 1.0
    else:
        features[f"{name}={value}"] = 1.0
