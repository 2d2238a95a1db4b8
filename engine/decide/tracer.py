"""Tracers: the stages of a decision report what they did; tracers listen.

After Open Policy Agent's ``topdown`` tracers. The stages emit events (a segment
evaluated, a check passed or failed, an action's eligibility, its score terms, an
arm dropped by an experiment, the rank cut); a tracer turns them into something:

* :data:`NULL_TRACER` ignores them. It is the default, and since stages build an
  event only when ``tracer.enabled``, a decision nobody traces pays one attribute
  read per stage.
* :class:`ExplainTracer` builds today's explanation: each action's reasons, its
  score terms, and a trace for every candidate.
* ``arbiter test`` coverage is another tracer (:class:`engine.cli.tester.CaseTracer`).

>>> tracer = ExplainTracer()
>>> tracer.check("offer", Reason(ReasonKind.CAP, "frequency", False, "2 impressions"))
>>> tracer.eligibility("offer", False)
>>> [(t.action_id, t.eligible, [r.name for r in t.reasons]) for t in tracer.traces]
[('offer', False, ['frequency'])]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from dsl.ruleset import Placement, Ruleset, Segment
from dsl.vocabulary import ReasonKind
from engine.decide.decision import ActionTrace, RankedAction, Reason


class Tracer:
    """Receives the events of one decision. This base class ignores them all."""

    enabled: ClassVar[bool] = False
    """Stages build events only for an enabled tracer."""

    def stage(self, name: str) -> None:
        """A stage of the decision begins (segments, scoring, allocation, ranking,
        content); "" when the last one ended. Called for every decision: keep it cheap."""

    def segment(self, segment: Segment, matched: bool) -> None:
        """A segment was evaluated for the customer."""

    def check(self, action_id: str, reason: Reason) -> None:
        """A rule about an action was checked: eligibility, consent, a cap, an allocation."""

    def eligibility(self, action_id: str, eligible: bool) -> None:
        """Every check of the action is done: it is a candidate, or it is out."""

    def score_terms(self, action_id: str, terms: Mapping[str, float]) -> None:
        """What the action's score was computed from (merged over stages)."""

    def dropped(self, action_id: str) -> None:
        """A candidate was taken out after scoring (an arm not played, a holdout)."""

    def fallback(self, action_id: str, reason: Reason) -> None:
        """Nothing was eligible: the placement's fallback is shown."""

    def ranked(self, shown: Sequence[RankedAction], candidates: Sequence[RankedAction],
               limit: int) -> None:
        """The final cut: ``shown`` out of ``candidates``."""


NULL_TRACER = Tracer()


class TracerGroup(Tracer):
    """Several tracers listening to one decision (explain and coverage, say)."""

    enabled = True

    def __init__(self, tracers: Sequence[Tracer]) -> None:
        self.tracers = tuple(t for t in tracers if t.enabled)

    def stage(self, name: str) -> None:
        for t in self.tracers:
            t.stage(name)

    def segment(self, segment: Segment, matched: bool) -> None:
        for t in self.tracers:
            t.segment(segment, matched)

    def check(self, action_id: str, reason: Reason) -> None:
        for t in self.tracers:
            t.check(action_id, reason)

    def eligibility(self, action_id: str, eligible: bool) -> None:
        for t in self.tracers:
            t.eligibility(action_id, eligible)

    def score_terms(self, action_id: str, terms: Mapping[str, float]) -> None:
        for t in self.tracers:
            t.score_terms(action_id, terms)

    def dropped(self, action_id: str) -> None:
        for t in self.tracers:
            t.dropped(action_id)

    def fallback(self, action_id: str, reason: Reason) -> None:
        for t in self.tracers:
            t.fallback(action_id, reason)

    def ranked(self, shown: Sequence[RankedAction], candidates: Sequence[RankedAction],
               limit: int) -> None:
        for t in self.tracers:
            t.ranked(shown, candidates, limit)


def combine(*tracers: Tracer | None) -> Tracer:
    """One tracer for these: the null tracer, the only enabled one, or a group."""
    enabled = [t for t in tracers if t is not None and t.enabled]
    if not enabled:
        return NULL_TRACER
    return enabled[0] if len(enabled) == 1 else TracerGroup(enabled)


class ExplainTracer(Tracer):
    """Builds the explanation: reasons and score terms per action, a trace per candidate."""

    enabled = True

    def __init__(self) -> None:
        self.reasons: dict[str, list[Reason]] = {}
        self.terms: dict[str, dict[str, float]] = {}
        self.segments: dict[str, bool] = {}
        self.traces: list[ActionTrace] = []
        self.shown: set[str] = set()
        self.candidates: Sequence[RankedAction] = ()

    def segment(self, segment: Segment, matched: bool) -> None:
        self.segments[segment.name] = matched

    def check(self, action_id: str, reason: Reason) -> None:
        self.reasons.setdefault(action_id, []).append(reason)

    def eligibility(self, action_id: str, eligible: bool) -> None:
        if not eligible:
            self._trace(action_id, False)

    def score_terms(self, action_id: str, terms: Mapping[str, float]) -> None:
        self.terms.setdefault(action_id, {}).update(terms)

    def dropped(self, action_id: str) -> None:
        self._trace(action_id, False)

    def fallback(self, action_id: str, reason: Reason) -> None:
        self.reasons[action_id] = [reason]  # not a candidate: only why it is shown
        self.terms[action_id] = {}

    def ranked(self, shown: Sequence[RankedAction], candidates: Sequence[RankedAction],
               limit: int) -> None:
        self.shown = {a.action_id for a in shown}
        self.candidates = candidates

    def _trace(self, action_id: str, eligible: bool, extra: Sequence[Reason] = ()) -> None:
        reasons = (*self.reasons.get(action_id, ()), *extra)
        self.traces.append(ActionTrace(action_id, eligible, reasons))

    def explain(self, ruleset: Ruleset, placement: Placement, shown: Sequence[RankedAction]
                ) -> tuple[ActionTrace, ...]:
        """Give each shown action its reasons and terms; every candidate's trace, sorted."""
        for candidate in self.candidates:
            candidate.score_terms = self.terms.get(candidate.action_id, {})
            self._trace(candidate.action_id, candidate.action_id in self.shown,
                        score_reasons(candidate, placement))
        for action in shown:
            action.score_terms = self.terms.get(action.action_id, {})
            action.reasons = [*self.segment_reasons(ruleset, action.action_id),
                              *self.reasons.get(action.action_id, ()),
                              *score_reasons(action, placement)]
        return tuple(sorted(self.traces, key=lambda t: (not t.eligible, t.action_id)))

    def segment_reasons(self, ruleset: Ruleset, action_id: str) -> list[Reason]:
        """The segments an action's conditions refer to, matched or not."""
        used = set(ruleset.actions[action_id].segments)
        return [Reason(ReasonKind.SEGMENT, s.name, self.segments.get(s.name) is True, s.source,
                       str(s.pos))
                for s in ruleset.segments if s.name in used]


def score_reasons(action: RankedAction, placement: Placement) -> list[Reason]:
    """How the action's score was computed: the placement's formula or the default product."""
    terms = " x ".join(f"{k} {v:.4g}" for k, v in action.score_terms.items()
                       if k in ("propensity", "value", "weight"))
    if placement.rank_source:
        return [Reason(ReasonKind.SCORE, "rank", True,
                       f"{action.score:.4f} = {placement.rank_source}  [{terms}]",
                       str(placement.pos))]
    return [Reason(ReasonKind.SCORE, "score", True, f"{action.score:.4f} = {terms}")]
