"""A checked Decide request: what the decision path is given (see engine.requests)."""

from __future__ import annotations

import msgspec

from dsl.ruleset import Placement, Ruleset
from engine.records import AttrValue


class DecideInput(msgspec.Struct, frozen=True):
    """Everything one decision depends on besides the profile and the learnt state (a
    Struct: built for every request, several times cheaper than a frozen dataclass)."""

    user_id: str
    placement: Placement
    channel: str
    context: dict[str, AttrValue]
    limit: int
    explain: bool
    now: float
    # the ruleset it was checked against: its decision uses that one, even when a reload
    # swaps the serving ruleset between the check and the decision (never a mix of two)
    ruleset: Ruleset | None = None
