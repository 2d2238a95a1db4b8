"""Declared attributes: the profile, context and thresholds schemas of a ruleset.

>>> spec = FieldSpec("spend", "number", pii=False, default=0.0, pos=None)
>>> spec.nullable
False
"""

from __future__ import annotations

from dataclasses import dataclass

from dsl.ast import Pos

SCALAR_TYPES = {"number", "string", "bool", "timestamp"}

# built-in attributes every profile and context has: name -> (type, nullable)
PROFILE_BUILTINS = {
    "user_id": ("string", False),
    "known": ("bool", False),
    "first_seen": ("timestamp", True),
    "last_seen": ("timestamp", True),
}
CONTEXT_BUILTINS = {"placement": ("string", False), "channel": ("string", False)}
ITEM_BUILTINS = {"id": ("string", False)}
"""Every catalogue item has an id; the ``items`` block declares the rest."""
RECOMMENDED_FIELDS = {"score": ("number", False), "reason": ("string", False)}
"""What a recommended item carries besides its attributes (templates read them)."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared attribute: its type, whether it is personal data, its default."""

    name: str
    type: str  # number | string | bool | timestamp | list | map
    pii: bool
    default: object
    pos: Pos | None

    @property
    def nullable(self) -> bool:
        return self.default is None
