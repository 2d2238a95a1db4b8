"""Typed AST of the Arbiter rule language: small immutable nodes with positions.

Every node carries a :class:`Pos` (file, line, column) so that any later stage can
report an error at the exact place in the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pos:
    """A position in a rule file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# ---- expressions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, bool, null or duration (seconds) constant."""

    value: object
    kind: str  # number | string | bool | null | duration
    pos: Pos
    text: str = field(default="", compare=False)  # as written: "24h", "2.50"


@dataclass(frozen=True, slots=True)
class Now:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Ref:
    """A dotted name: ``profile.total_spend``, ``context.device``, ``high_value``."""

    parts: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Index:
    """``profile.prefs["size"]``: a map's value for a key (null when missing)."""

    target: Ref
    key: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "not" | "-" | "is null" | "is not null"
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / == != < <= > >= in "not in"
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Expr, ...]
    pos: Pos


Expr = Literal | Now | Ref | Index | Call | ListExpr | Unary | Binary | BoolOp


# ---- declarations -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDecl:
    """An attribute of the profile or context schema."""

    name: str
    type: str  # number | string | bool | timestamp
    pii: bool
    default: Literal | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class SchemaBlock:
    kind: str  # profile | context | thresholds
    fields: tuple[FieldDecl, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ImportDef:
    """``import "../shared"``: a path relative to the importing file."""

    path: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class EventsDef:
    """``events: page_view, add_to_cart``: the behavioural events rules may count."""

    names: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class PlacementDef:
    name: str
    channels: tuple[str, ...]
    slots: int
    pos: Pos
    fallback: str | None = None
    rank: Expr | None = None  # the arbitration formula; None: propensity * value * weight
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class SegmentDef:
    name: str
    condition: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    limit: int
    window_seconds: float
    pos: Pos
    window_text: str = field(default="", compare=False)  # as written: "7d"


@dataclass(frozen=True, slots=True)
class TemplateToken:
    """``{{ expr | filter(args) }}`` inside a content string."""

    expr: Expr
    filters: tuple[tuple[str, tuple[Literal, ...]], ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class TemplateIf:
    """``{% if cond %}then{% else %}otherwise{% end %}`` inside a content string."""

    condition: Expr
    then: tuple[TemplatePart, ...]
    otherwise: tuple[TemplatePart, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class TemplateFor:
    """``{% for item in context.recommended %}...{% end %}``: once per list element."""

    var: str
    items: Expr
    body: tuple[TemplatePart, ...]
    pos: Pos


TemplatePart = str | TemplateToken | TemplateIf | TemplateFor


@dataclass(frozen=True, slots=True)
class ContentField:
    name: str
    parts: tuple[TemplatePart, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ActionDef:
    name: str
    placements: tuple[str, ...]
    channels: tuple[str, ...]
    when: Expr | None
    value: Expr | None
    weight: float
    priority: int
    prior: float | None
    cap: FrequencyCap | None
    content: tuple[ContentField, ...]
    pos: Pos
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)
    unless: Expr | None = None
    starts: str | None = None  # ISO date or date-time, as written
    ends: str | None = None
    tags: tuple[str, ...] = ()
    consent: tuple[str, ...] = ()
    group: str | None = None
    cooldown: Literal | None = None  # a duration
    suppress: Suppression | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """``suppress: 14d after 2 dismiss``: hide for the window once the outcome count is reached."""

    window: Literal
    count: int
    outcome: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """``group cart_recovery: at most 2 per 7d`` or ``channel email: at most 3 per 7d``."""

    scope: str  # group | channel
    name: str
    limit: int
    window: Literal
    pos: Pos


@dataclass(frozen=True, slots=True)
class PolicyDef:
    rules: tuple[PolicyRule, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ModelDef:
    """``model on P { ... }``: the propensity model of a placement's actions."""

    placement: str
    pos: Pos
    per: str = "action"  # action: one model per action | placement: one, action a feature
    features: tuple[tuple[str, Pos], ...] | None = None  # None: segments and context
    learner: str = "logistic"
    bagging: int = 0  # members of an online bag (0: no bagging)
    hashed: int = 0  # hash features into this many buckets (0: one-hot)
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class ExperimentDef:
    name: str
    placement: str
    arms: tuple[str, ...]
    prior: tuple[str, tuple[float, ...]]  # ("beta", (a, b)) | ("normal_gamma", (mu, k, a, b))
    reward: str
    pos: Pos
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)
    weights: tuple[float, ...] = ()  # fixed split (A/B/n); empty: Thompson sampling
    holdout: float = 0.0  # percent of customers who get no experiment (nor personalisation)
    salt: str | None = None  # bucketing salt; default: the experiment's name
    layer: str | None = None  # experiments in one layer are mutually exclusive
    reward_value: bool = False  # reward: outcome.value (a continuous reward)
    window: Literal | None = None  # a duration: sliding window of the statistics
    half_life: Literal | None = None  # a duration: exponential discounting
    winner: str | None = None  # promoted arm
    traffic: float = 100.0  # percent of customers in the experiment at all


Item = (ImportDef | SchemaBlock | EventsDef | PlacementDef | SegmentDef | ActionDef | ExperimentDef
        | ModelDef | PolicyDef)


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed rule file."""

    path: str
    items: tuple[Item, ...]


_POSITIONAL = {"pos", "field_pos", "text"}


def shape(node: object) -> object:
    """A node as nested tuples without positions: equal for the same rules, wherever written.

    >>> a = Ref(("profile", "x"), Pos("a.arb", 1, 1))
    >>> shape(a) == shape(Ref(("profile", "x"), Pos("b.arb", 9, 9)))
    True
    """
    if isinstance(node, tuple | list):
        return tuple(shape(n) for n in node)
    if hasattr(node, "__dataclass_fields__"):
        return (type(node).__name__, *(
            (name, shape(getattr(node, name)))
            for name in node.__dataclass_fields__ if name not in _POSITIONAL))
    return node
