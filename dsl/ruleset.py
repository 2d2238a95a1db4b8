"""The compiled ruleset: an immutable object the engine evaluates, with a revision.

Conditions are Python functions generated once at load time by
:mod:`dsl.compiler`; every function takes the same arguments::

    fn(A, C, E, S, now, X)

``A`` profile attributes (defaults applied), ``C`` context, ``E`` event
histories by event type, ``S`` segment results, ``now`` epoch seconds and ``X``
the action's fields (content templates only).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from markupsafe import escape

from dsl.ast import ActionDef, Pos
from dsl.runtime import to_text
from dsl.schema import FieldSpec
from dsl.vocabulary import MODEL_VOCABULARY

CompiledFn = Callable[..., Any]
_NUMBER = (int, float)  # (``int | float`` would build a union object per call)


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    fn: CompiledFn
    pos: Pos
    source: str


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    limit: int
    window_seconds: float
    text: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` contacts per ``window_seconds`` (a group or channel policy)."""

    limit: int
    window_seconds: float
    text: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Suppression:
    """Not shown for ``window_seconds`` once ``count`` ``outcome``s were recorded in it."""

    window_seconds: float
    count: int
    outcome: str
    text: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class TemplateToken:
    fn: CompiledFn
    kind: str
    filters: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True, slots=True)
class TemplateIf:
    condition: CompiledFn
    then: Template
    otherwise: Template


@dataclass(frozen=True, slots=True)
class TemplateFor:
    var: str
    items: CompiledFn
    body: Template


@dataclass(frozen=True, slots=True)
class Template:
    """A content string: literal text, compiled ``{{ ... }}`` tokens, if/for blocks.

    Templates are sandboxed by construction: they compile from the same checked
    expressions as rules, so they can read the profile, the context, segments and
    the action's fields, and nothing else; a loop runs once per list element.

    Each part becomes, once, the literal text or a function that renders it
    (filters, printing and escaping decided when the template is built, not per use).

    >>> from dsl.loader import load_text
    >>> rules = load_text('''
    ... profile { name: string }
    ... context { n: number }
    ... placement web { channels: web }
    ... action hi { placements: web  value: 1
    ...   content { m: html "{% if context.n > 1 %}<b>{{ profile.name | upper }}</b>{% end %}" } }
    ... ''')
    >>> template = dict(rules.actions["hi"].content)["m"]
    >>> template.render(({"name": "a&b"}, {"n": 2.0}, {}, {}, 0.0, {}))
    '<b>A&amp;B</b>'
    """

    parts: tuple[str | TemplateToken | TemplateIf | TemplateFor, ...]
    html: bool = False  # escape every inserted value (MarkupSafe) unless filtered | raw
    _pieces: tuple[str | Callable[[tuple[Any, ...]], str], ...] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pieces",
                           tuple(_piece(part, self.html) for part in self.parts))

    def render(self, args: tuple[Any, ...]) -> str:
        return "".join([piece if type(piece) is str else piece(args)  # type: ignore[operator]
                        for piece in self._pieces])


def _piece(part: str | TemplateToken | TemplateIf | TemplateFor, html: bool
           ) -> str | Callable[[tuple[Any, ...]], str]:
    """The literal text, or a function of the template's arguments that renders ``part``."""
    if isinstance(part, str):
        return part
    if isinstance(part, TemplateIf):
        condition, then, otherwise = part.condition, part.then.render, part.otherwise.render
        return lambda args: then(args) if condition(*args) is True else otherwise(args)
    if isinstance(part, TemplateFor):
        items, body, var = part.items, part.body.render, part.var

        def each(args: tuple[Any, ...]) -> str:
            head, fields = args[:5], args[5]
            return "".join([body((*head, {**fields, var: item}))
                            for item in items(*args) or ()])
        return each
    fn, kind, filters = part.fn, part.kind, part.filters
    escaped = html and not any(name == "raw" for name, _ in filters)
    if not filters and kind != "timestamp":
        if escaped:
            return lambda args: _escaped(to_text(fn(*args), kind))
        return lambda args: to_text(fn(*args), kind)

    def filtered(args: tuple[Any, ...]) -> str:
        value, now_kind = fn(*args), kind
        for name, fargs in filters:
            value, now_kind = _apply_filter(name, fargs, value, now_kind, args[0])
        text = to_text(value, now_kind, args[0].get("timezone"))  # a date: the customer's
        return _escaped(text) if escaped else text
    return filtered


_HTML_SPECIAL = re.compile("[&<>'\"]")


def _escaped(text: str) -> str:
    """``text`` escaped for HTML as MarkupSafe escapes it; unchanged (no copy, no Markup
    object) when it has nothing to escape, as most inserted names and numbers have not.

    >>> _escaped("Tom & Jerry's <b>"), _escaped("12.5")
    ('Tom &amp; Jerry&#39;s &lt;b&gt;', '12.5')
    """
    return str(escape(text)) if _HTML_SPECIAL.search(text) else text


@functools.lru_cache(maxsize=4096)  # prices repeat: the Decimal arithmetic once per value
def round_half_up(value: float, digits: int) -> float:
    """Round as people do (2.675 → 2.68), after dropping binary float noise.

    >>> round_half_up(75 - 50.255, 2)
    24.75
    """
    exact = Decimal(f"{value:.12g}")
    return float(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _apply_filter(name: str, args: tuple[Any, ...], value: Any, kind: str,
                  attributes: Mapping[str, Any]) -> tuple[Any, str]:
    if name == "default":
        return (args[0], "string") if value is None or value == "" else (value, kind)
    if value is None:
        return None, kind
    if name == "join" and isinstance(value, list):
        return str(args[0]).join(value), "string"
    if name in ("upper", "lower", "title"):
        text = to_text(value, kind, attributes.get("timezone"))
        return getattr(text, name)(), "string"
    if name == "round" and isinstance(value, _NUMBER):
        return round_half_up(float(value), int(args[0])), kind
    return value, kind


@dataclass(frozen=True, slots=True)
class RecommendSpec:
    """``items: recommend(N, where: ..., exclude: EVENT within D)`` of an action."""

    count: int
    where: CompiledFn | None  # fn(A, C, E, S, now, {"item": item}) -> bool | None
    where_source: str
    exclude: tuple[tuple[str, float | None], ...]  # (event, window seconds or None: ever)
    pos: Pos
    where_reads_only_items: bool = False  # the same answer for every customer and time


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """``cluster NAME { features: ..., k: N, names: ... }``: a learned segmentation."""

    name: str
    features: tuple[str, ...]
    fns: tuple[CompiledFn, ...]  # fn(A, C, E, S, now) -> number | None, one per feature
    k: int
    names: tuple[str, ...]  # empty: clusters are numbered 0..k-1
    pos: Pos

    def key(self) -> tuple[tuple[str, ...], int]:
        """What the learnt model depends on: a change relearns it from scratch."""
        return self.features, self.k


@dataclass(frozen=True, slots=True)
class ScoreSpec:
    """``score NAME { label: ... | target: ..., features: ... }``: a predictive score."""

    name: str
    features: tuple[str, ...]
    fns: tuple[CompiledFn, ...]  # fn(A, C, E, S, now) -> number | None, one per feature
    kind: str  # none (no EVENT within D) | any (EVENT within D) | sum (sum(EVENT.value) ...)
    event: str
    window_seconds: float
    text: str  # the label or target as written
    pos: Pos

    @property
    def binary(self) -> bool:
        return self.kind != "sum"

    def key(self) -> tuple[object, ...]:
        """What the learnt model depends on: a change relearns it from scratch."""
        return self.features, self.kind, self.event, self.window_seconds


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    placements: frozenset[str]
    channels: frozenset[str] | None  # None: every channel of its placements
    when: CompiledFn | None
    when_source: str
    when_pos: Pos
    value: CompiledFn
    weight: float
    priority: int
    prior: float
    cap: FrequencyCap | None
    content: tuple[tuple[str, Template], ...]
    pos: Pos
    segments: tuple[str, ...]  # segments its conditions refer to
    when_segments: tuple[str, ...] = ()  # segments its ``when`` refers to (explanations)
    unless: CompiledFn | None = None
    unless_source: str = ""
    unless_pos: Pos | None = None
    starts: float | None = None  # validity window [starts, ends), epoch seconds
    ends: float | None = None
    tags: tuple[str, ...] = ()
    consent: tuple[str, ...] = ()  # purposes the customer must have consented to
    group: str | None = None
    cooldown: Limit | None = None  # limit 1: no impression within the window
    suppress: Suppression | None = None
    recommend: RecommendSpec | None = None  # its item list (engine.decide.recommend)
    # the checked declaration: a plain field needs no compiled copy (docs/architecture.md)
    definition: ActionDef | None = field(default=None, repr=False, compare=False)

    def fields(self, value: float, propensity: float = 0.0) -> dict[str, Any]:
        """What ``action.*`` reads in rank formulas and templates."""
        return {"id": self.id, "value": value, "weight": self.weight,
                "priority": float(self.priority), "propensity": propensity}


@dataclass(frozen=True, slots=True)
class Placement:
    name: str
    channels: frozenset[str]
    slots: int
    actions: tuple[Action, ...]  # in declaration-independent order: priority desc, id
    pos: Pos
    fallback: str | None = None  # shown when no action is eligible
    rank: CompiledFn | None = None  # the arbitration formula; None: propensity*value*weight
    rank_source: str = ""  # the formula as written; empty for the default
    attribution: float | None = None  # seconds a decision takes feedback; None: the server's


@dataclass(frozen=True, slots=True)
class BetaPrior:
    """Prior of a binary reward rate: ``Beta(alpha, beta)``."""

    alpha: float = 1.0
    beta: float = 1.0


@dataclass(frozen=True, slots=True)
class NormalGammaPrior:
    """Prior of a continuous reward's mean and precision (Normal-Gamma).

    ``pooled`` (the default of a value reward without a written prior): the prior is
    set from all arms' observations together, on the data's own scale (empirical
    Bayes; engine.experiments.posteriors.pooled_prior); the numbers here are used
    only before any observation.
    """

    mu: float = 0.0
    kappa: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0
    pooled: bool = False


Prior = BetaPrior | NormalGammaPrior


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    placement: str
    arms: tuple[str, ...]
    prior: Prior
    reward: str  # the outcome that rewards an arm: click | conversion | ...
    pos: Pos
    weights: tuple[float, ...] = ()  # fixed split; empty: Thompson sampling
    holdout: float = 0.0  # percent
    salt: str = ""
    layer: str | None = None
    reward_value: bool = False  # the reward is the outcome's value (revenue), not 1
    window: float | None = None  # seconds: only outcomes of decisions this recent count
    half_life: float | None = None  # seconds: older decisions' outcomes count less
    winner: str | None = None  # promoted arm: everyone gets it, nothing is explored
    traffic: float = 100.0  # percent of customers who take part at all

    @property
    def windowed(self) -> bool:
        """Whether its statistics need time buckets (a window or a half-life)."""
        return self.window is not None or self.half_life is not None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How a placement's propensities are learnt (``model on P { ... }``).

    ``features`` names ``segments``, ``profile.X`` and ``context.X``; ``None``
    means every segment flag and context value (the default model).
    """

    per: str = "action"  # action | placement
    features: tuple[str, ...] | None = None
    learner: str = "logistic"  # logistic | adpredictor | tree
    bagging: int = 0
    hashed: int = 0
    # one-hot values per feature with a weight of their own; not part of what the model
    # is (changing it keeps what was learnt: engine.learning.vocabulary)
    vocabulary: int = field(default=MODEL_VOCABULARY, compare=False)

    def key(self, placement: str, action_id: str) -> str:
        """The model that predicts ``action_id`` at ``placement``."""
        return action_id if self.per == "action" else f"@{placement}"

    def __setstate__(self, state: Sequence[Any]) -> None:
        """Unpickle (a snapshot's model specs); one from before a field was added gets
        that field's default."""
        values = list(state)
        for i, f in enumerate(fields(self)):
            object.__setattr__(self, f.name, values[i] if i < len(values) else f.default)


DEFAULT_MODEL = ModelSpec()


@dataclass(frozen=True)
class Ruleset:
    """Everything a decision needs, compiled; never mutated after loading."""

    revision: str
    profile_schema: Mapping[str, FieldSpec]
    context_schema: Mapping[str, FieldSpec]
    events: frozenset[str]
    segments: tuple[Segment, ...]  # dependency order: a segment after those it uses
    actions: Mapping[str, Action]
    placements: Mapping[str, Placement]
    experiments: Mapping[str, Experiment]
    experiment_by_placement: Mapping[str, Experiment]
    sources: Mapping[str, str] = field(repr=False)
    warnings: tuple[str, ...] = ()
    cost: int = 0  # expression nodes evaluated per decision, at most (dsl/lint.py)
    attribute_defaults: Mapping[str, Any] = field(default_factory=dict)
    context_defaults: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # layer -> experiments
    group_caps: Mapping[str, Limit] = field(default_factory=dict)
    channel_caps: Mapping[str, Limit] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> action ids
    models: Mapping[str, ModelSpec] = field(default_factory=dict)  # placement -> its model
    # percentile() statistics the rules read: key (count:EVENT, sum:EVENT, profile:NAME)
    # -> how the rules wrote it
    population: Mapping[str, str] = field(default_factory=dict)
    # the catalogue's declared attributes (the items block) and the items of items.jsonl
    item_schema: Mapping[str, FieldSpec] = field(default_factory=dict)
    items_declared: bool = False
    catalogue: tuple[Mapping[str, Any], ...] = ()
    clusters: Mapping[str, ClusterSpec] = field(default_factory=dict)
    scores: Mapping[str, ScoreSpec] = field(default_factory=dict)
    private_context: frozenset[str] = field(init=False, default=frozenset())
    """Context attributes declared ``pii``: masked in decision logs, never a feature of a
    default model (from ``context_schema``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "private_context", frozenset(
            name for name, spec in self.context_schema.items() if spec.pii))

    def model_of(self, placement: str) -> ModelSpec:
        return self.models.get(placement, DEFAULT_MODEL)
