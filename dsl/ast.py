"""Typed AST of the Arbiter rule language: small immutable nodes with positions.

Every node carries a :class:`Pos` (file, line, column) so that any later stage can
report an error at the exact place in the source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pos:
    """A position in a rule file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# ---- block fields, described once ------------------------------------------
@dataclass(frozen=True, slots=True)
class Syntax:
    """How a field of a block (action, experiment, model, placement) is written.

    ``kind`` is the shape of its value (``names``, ``expr``, ``duration``, ...): the
    parser reads, and the formatter prints, every field of a kind the same way.
    ``rule`` is the grammar alias when it is not the field's keyword.
    """

    kind: str
    keyword: str = ""  # as written, when it differs from the attribute ("per")
    rule: str = ""  # the grammar rule's alias, when it differs from the keyword


def written(kind: str, *, keyword: str = "", rule: str = "") -> dict[str, Syntax]:
    """Field metadata: ``cap: FrequencyCap | None = field(default=None, metadata=...)``."""
    return {"syntax": Syntax(kind, keyword, rule)}


@dataclass(frozen=True, slots=True)
class BlockField:
    """One row of the field table: attribute, keyword, grammar rule, kind, default."""

    attr: str
    keyword: str
    rule: str
    kind: str
    default: object


def block_fields(node: type) -> tuple[BlockField, ...]:
    """A block's fields in canonical order (the order ``arbiter fmt`` writes them).

    >>> [f.keyword for f in block_fields(PlacementDef)]
    ['channels', 'slots', 'fallback', 'rank', 'attribution']
    """
    rows = []
    for f in dataclasses.fields(node):
        syntax = f.metadata.get("syntax")
        if syntax is None:
            continue
        keyword = syntax.keyword or f.name
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())  # type: ignore[operator]
        rows.append(BlockField(f.name, keyword, syntax.rule or keyword, syntax.kind, default))
    return tuple(rows)


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
    kind: str  # profile | context | thresholds | items
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
    pos: Pos
    channels: tuple[str, ...] = field(default=(), metadata=written("names"))
    slots: int = field(default=1, metadata=written("int"))
    fallback: str | None = field(default=None, metadata=written("name"))
    # the arbitration formula; None: propensity * value * weight
    rank: Expr | None = field(default=None, metadata=written("expr", rule="rank_formula"))
    # how long a decision here takes feedback; None: the server's --attribution-window
    attribution: Literal | None = field(default=None, metadata=written("duration"))
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
    html: bool = False  # ``name: html "..."``: inserted values are HTML-escaped


@dataclass(frozen=True, slots=True)
class Exclusion:
    """``exclude: purchase within 30d``: items the customer had that event with (in the
    window; ever, as far as the profile's item history goes, without one)."""

    event: str
    window: Literal | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Recommend:
    """``items: recommend(4, where: item.in_stock, exclude: purchase within 30d)``."""

    count: int
    pos: Pos
    where: Expr | None = None
    exclude: tuple[Exclusion, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionDef:
    """``action NAME { ... }``: its fields, in the order ``arbiter fmt`` writes them."""

    name: str
    pos: Pos
    placements: tuple[str, ...] = field(default=(), metadata=written("names"))
    channels: tuple[str, ...] = field(default=(), metadata=written("names"))
    tags: tuple[str, ...] = field(default=(), metadata=written("names"))
    group: str | None = field(default=None, metadata=written("name"))
    starts: str | None = field(default=None, metadata=written("date"))  # ISO, as written
    ends: str | None = field(default=None, metadata=written("date"))
    consent: tuple[str, ...] = field(default=(), metadata=written("names"))
    when: Expr | None = field(default=None, metadata=written("expr"))
    unless: Expr | None = field(default=None, metadata=written("expr"))
    value: Expr | None = field(default=None, metadata=written("expr"))
    weight: float = field(default=1.0, metadata=written("number"))
    priority: int = field(default=0, metadata=written("int"))
    prior: float | None = field(default=None, metadata=written("number"))
    cap: FrequencyCap | None = field(default=None, metadata=written("cap"))
    cooldown: Literal | None = field(default=None, metadata=written("duration"))
    suppress: Suppression | None = field(default=None, metadata=written("suppress"))
    items: Recommend | None = field(default=None, metadata=written("recommend"))
    content: tuple[ContentField, ...] = field(default=(), metadata=written("content"))
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


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
class ClusterFeature:
    name: str  # as written before '=', or the expression as printed
    expr: Expr
    pos: Pos
    named: bool = True


@dataclass(frozen=True, slots=True)
class ClusterDef:
    """``cluster rfm { features: recency = ..., frequency = ...; k: 4; names: ... }``."""

    name: str
    pos: Pos
    features: tuple[ClusterFeature, ...] = field(
        default=(), metadata=written("cluster_features", rule="cluster_features"))
    k: int = field(default=0, metadata=written("int", rule="cluster_k"))
    names: tuple[str, ...] = field(default=(), metadata=written("names", rule="cluster_names"))
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    """What a score predicts, from the events after each snapshot of the customer:
    ``no EVENT within D`` (churn: 1 when none comes), ``EVENT within D`` (1 when one
    comes), or ``sum(EVENT.value) within D`` (a number: the total in the window)."""

    kind: str  # none | any | sum
    event: str
    window: Literal
    pos: Pos

    @property
    def binary(self) -> bool:
        return self.kind != "sum"


@dataclass(frozen=True, slots=True)
class ScoreDef:
    """``score churn { label: no purchase within 60d  features: ... }``."""

    name: str
    pos: Pos
    label: ScoreOutcome | None = field(
        default=None, metadata=written("score_outcome", rule="score_label_none"))
    target: ScoreOutcome | None = field(
        default=None, metadata=written("score_outcome", rule="score_target"))
    features: tuple[ClusterFeature, ...] = field(
        default=(), metadata=written("cluster_features", rule="score_features"))
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)

    @property
    def outcome(self) -> ScoreOutcome | None:
        return self.label or self.target


@dataclass(frozen=True, slots=True)
class ModelDef:
    """``model on P { ... }``: the propensity model of a placement's actions."""

    placement: str
    pos: Pos
    # action: one model per action | placement: one, the action a feature
    per: str = field(default="action", metadata=written("name", rule="model_per"))
    # None: segments and context
    features: tuple[tuple[str, Pos], ...] | None = field(
        default=None, metadata=written("features", rule="model_features"))
    learner: str = field(default="logistic", metadata=written("name", rule="model_learner"))
    # members of an online bag (0: no bagging)
    bagging: int = field(default=0, metadata=written("int", rule="model_bagging"))
    # hash features into this many buckets (0: one-hot)
    hashed: int = field(default=0, metadata=written("int", rule="model_hashed"))
    # values of a one-hot feature with a weight of their own (0: not written, the default)
    vocabulary: int = field(default=0, metadata=written("int", rule="model_vocabulary"))
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class ExperimentDef:
    name: str
    placement: str
    pos: Pos
    arms: tuple[str, ...] = field(default=(), metadata=written("names"))
    # fixed split (A/B/n); empty: Thompson sampling. Written as ``allocate: weights(...)``
    weights: tuple[float, ...] = field(default=(), metadata=written(
        "weights", keyword="allocate", rule="weights"))
    # ("beta", (a, b)) | ("normal_gamma", (mu, k, a, b)); ``allocate: thompson(prior = ...)``
    prior: tuple[str, tuple[float, ...]] = field(default=("beta", (1.0, 1.0)), metadata=written(
        "thompson", keyword="allocate", rule="allocate"))
    traffic: float = field(default=100.0, metadata=written("percent"))  # % taking part at all
    holdout: float = field(default=0.0, metadata=written("percent"))  # % with no personalisation
    salt: str | None = field(default=None, metadata=written("string"))  # default: the name
    layer: str | None = field(default=None, metadata=written("name"))  # mutually exclusive
    reward: str = field(default="click", metadata=written("reward"))
    reward_value: bool = False  # reward: outcome.value (a continuous reward), read with reward
    window: Literal | None = field(default=None, metadata=written("duration"))  # sliding window
    half_life: Literal | None = field(default=None, metadata=written("duration"))  # discounting
    winner: str | None = field(default=None, metadata=written("name"))  # promoted arm
    field_pos: dict[str, Pos] = field(default_factory=dict, compare=False, hash=False)


Item = (ImportDef | SchemaBlock | EventsDef | PlacementDef | SegmentDef | ActionDef | ExperimentDef
        | ModelDef | PolicyDef | ClusterDef | ScoreDef)


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


def walk(node: Expr) -> Iterator[Expr]:
    """Every node of an expression, the node itself first."""
    yield node
    if isinstance(node, Unary):
        yield from walk(node.operand)
    elif isinstance(node, Binary):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, BoolOp):
        for operand in node.operands:
            yield from walk(operand)
    elif isinstance(node, Call):
        for arg in node.args:
            yield from walk(arg)
        for _, value in node.kwargs:
            yield from walk(value)
    elif isinstance(node, Index):
        yield from walk(node.target)
    elif isinstance(node, ListExpr):
        for item in node.items:
            yield from walk(item)
