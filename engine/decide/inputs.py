"""A checked Decide request: what the decision path is given (see engine.requests)."""

from __future__ import annotations

from dataclasses import dataclass

from dsl.ruleset import Placement
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
