"""What a decision returns: ranked actions, their scores and the reasons behind them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from dsl.vocabulary import ReasonKind


@dataclass(frozen=True, slots=True)
class Reason:
    """One step of an explanation: what was checked, whether it passed, and where."""

    kind: ReasonKind
    name: str
    passed: bool
    detail: str = ""
    location: str = ""


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """An item ``items: recommend(...)`` chose for an action, and why."""

    item_id: str
    score: float
    reason: str  # model | co-occurrence | content | popularity | catalogue
    attributes: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        """What a template's ``item.NAME`` reads."""
        return {**self.attributes, "id": self.item_id, "score": self.score,
                "reason": self.reason}


class RankedAction(msgspec.Struct):
    """One candidate or shown action (a Struct: built for every candidate of every
    decision, several times cheaper than a dataclass)."""

    action_id: str
    score: float
    propensity: float
    value: float
    weight: float
    priority: int
    rank: int = 0
    experiment: str | None = None
    arm: str | None = None
    content: dict[str, str] = {}  # (an empty default is a new one for each)
    reasons: list[Reason] = []
    score_terms: dict[str, float] = {}
    tags: tuple[str, ...] = ()
    probability: float = 1.0  # P(chosen for this slot | request); see ShownAction
    items: tuple[RecommendedItem, ...] = ()  # items: recommend(...), best first


@dataclass(frozen=True, slots=True)
class ActionTrace:
    action_id: str
    eligible: bool
    reasons: tuple[Reason, ...]


class Decision(msgspec.Struct, frozen=True):
    """What was decided (immutable; ``msgspec.structs.replace`` makes a changed copy)."""

    decision_id: str
    revision: str
    decided_at: float
    user_id: str
    placement: str
    channel: str
    actions: tuple[RankedAction, ...]
    segments: tuple[str, ...]  # segments the user is in
    traces: tuple[ActionTrace, ...] = ()  # every candidate, when explain was asked
    holdout: str | None = None  # the experiment whose holdout this customer is in
    # P(action in the first slot) for every action the policy could have put there
    policy: dict[str, float] = {}
    degraded: bool = False  # the store was unavailable: an unknown customer, not recorded
    best_send_at: float | None = None  # email: the next hour in the customer's best slot

    def render(self) -> str:
        """A readable text form (used by ``arbiter decide``)."""
        lines = [
            f"decision {self.decision_id}  ruleset {self.revision}",
            f"user {self.user_id}  placement {self.placement}  channel {self.channel}",
            f"segments: {', '.join(self.segments) or '(none)'}",
        ]
        if self.degraded:
            lines.append("degraded: the profile store did not answer; decided as for an "
                         "unknown customer, not recorded (takes no feedback)")
        if self.holdout:
            lines.append(f"holdout of experiment {self.holdout}: no personalised action")
        if not self.actions:
            lines.append("no eligible action")
        for a in self.actions:
            arm = f"  [experiment {a.experiment}, arm {a.arm}]" if a.experiment else ""
            arm += f"  tags: {', '.join(a.tags)}" if a.tags else ""
            lines.append(
                f"{a.rank}. {a.action_id}  score={a.score:.4f}  (propensity {a.propensity:.4f},"
                f" value {a.value:g}, weight {a.weight:g}){arm}"
            )
            for key, text in a.content.items():
                lines.append(f"     {key}: {text}")
            for item in a.items:
                lines.append(f"     item {item.item_id}  score={item.score:.4f}  ({item.reason})")
        if self.traces:
            lines.append("why:")
            for trace in self.traces:
                mark = "+" if trace.eligible else "-"
                lines.append(f"  {mark} {trace.action_id}")
                for r in trace.reasons:
                    ok = "ok " if r.passed else "NO "
                    where = f"  ({r.location})" if r.location else ""
                    lines.append(f"      {ok}{r.kind} {r.name}: {r.detail}{where}")
        return "\n".join(lines)
