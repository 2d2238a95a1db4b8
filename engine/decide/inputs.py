"""A checked Decide request: what the decision path is given (see engine.requests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dsl.ruleset import Placement, Ruleset
from engine.records import AttrValue


@dataclass(frozen=True, slots=True)
class DecideInput:
    """Everything one decision depends on besides the profile and the learnt state."""

    user_id: str
    placement: Placement
    channel: str
    context: dict[str, AttrValue]
    limit: int
    explain: bool
    now: float
    # the ruleset it was checked against: its decision uses that one, even when a reload
    # swaps the serving ruleset between the check and the decision (never a mix of two)
    ruleset: Ruleset | None = field(default=None, compare=False, repr=False)
