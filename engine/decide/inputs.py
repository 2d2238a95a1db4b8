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

    def __repr__(self) -> str:  # the ruleset by its revision, not its whole contents
        revision = self.ruleset.revision if self.ruleset is not None else None
        return (f"DecideInput(user_id={self.user_id!r}, placement={self.placement.name!r}, "
                f"channel={self.channel!r}, context={self.context!r}, limit={self.limit}, "
                f"explain={self.explain}, now={self.now}, ruleset={revision!r})")
