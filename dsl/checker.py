"""Checked AST: names resolved, types inferred, cycles and duplicates rejected.

The checker never raises on bad rules; it collects positioned diagnostics. Its
output, :class:`CheckedRuleset`, holds the symbol tables and the inferred type of
every expression node, which the compiler uses to emit null-safe code only where a
value can actually be missing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from dsl import ast
from dsl.diagnostics import Diagnostic
from dsl.printer import print_expr
from dsl.schema import (
    CONTEXT_BUILTINS,
    ITEM_BUILTINS,
    PROFILE_BUILTINS,
    RECOMMENDED_FIELDS,
    FieldSpec,
)
from dsl.units import date_seconds
from dsl.vocabulary import (
    CONTACT_RETENTION_SECONDS,
    EVENT_RETENTION_SECONDS,
    FEATURE_TYPES,
    LEARNERS,
    MAX_CONTACTS_PER_ACTION,
    MAX_EVENT_TYPES,
    MAX_MODEL_VOCABULARY,
    MODEL_PER,
    REWARD_OUTCOMES,
)

MAX_RECOMMENDED = 50
"""The most items one recommend() returns."""
MAX_CLUSTERS = 20
MAX_SCORE_WINDOW = 365 * 86400.0
"""The most items one recommend() returns."""
PLAIN_ORDERED = {"number", "duration", "timestamp", "string"}
FILTERS = {"default": 1, "upper": 0, "lower": 0, "title": 0, "round": 1, "join": 1,
           "raw": 0}

ACTION_FIELDS = {
    "id": ("string", False),
    "value": ("number", False),
    "weight": ("number", False),
    "priority": ("number", False),
    "propensity": ("number", False),
}


@dataclass(frozen=True, slots=True)
class Type:
    """An expression's static type and whether it may be null at run time."""

    name: str  # number | string | bool | timestamp | duration | list | null
    nullable: bool
    item: str | None = None  # element type of a list

    def __str__(self) -> str:
        return f"list of {self.item}" if self.name == "list" else self.name


ERROR = Type("error", True)
"""The type of a name that failed to resolve: already reported, silences follow-on errors."""


@dataclass
class CheckedRuleset:
    """Symbol tables and inferred types of a ruleset that passed the checker."""

    profile: dict[str, FieldSpec] = field(default_factory=dict)
    context: dict[str, FieldSpec] = field(default_factory=dict)
    thresholds: dict[str, FieldSpec] = field(default_factory=dict)
    items: dict[str, FieldSpec] = field(default_factory=dict)  # the catalogue's attributes
    items_declared: bool = False  # an items block exists (recommend() needs one)
    events: dict[str, ast.Pos] = field(default_factory=dict)
    placements: dict[str, ast.PlacementDef] = field(default_factory=dict)
    segments: dict[str, ast.SegmentDef] = field(default_factory=dict)
    segment_order: list[str] = field(default_factory=list)
    actions: dict[str, ast.ActionDef] = field(default_factory=dict)
    experiments: dict[str, ast.ExperimentDef] = field(default_factory=dict)
    policies: list[ast.PolicyRule] = field(default_factory=list)
    models: dict[str, ast.ModelDef] = field(default_factory=dict)  # placement -> model
    clusters: dict[str, ast.ClusterDef] = field(default_factory=dict)  # learned segments
    scores: dict[str, ast.ScoreDef] = field(default_factory=dict)  # predictive scores
    types: dict[int, Type] = field(default_factory=dict)
    loop_refs: set[int] = field(default_factory=set)  # refs to a template loop variable
    item_refs: set[int] = field(default_factory=set)  # item.NAME (recommend's where, loops)
    segment_refs: dict[str, set[str]] = field(default_factory=dict)
    # percentile(...) aggregates: population key -> how the rules wrote it
    population: dict[str, str] = field(default_factory=dict)

    def type_of(self, node: ast.Expr) -> Type:
        return self.types[id(node)]


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class Checker:
    """Runs the checks over every module of a ruleset and collects diagnostics."""

    def __init__(self) -> None:
        self.out = CheckedRuleset()
        self.diagnostics: list[Diagnostic] = []
        self._experiment_by_placement: dict[str, ast.ExperimentDef] = {}
        self._loop_vars: list[str] = []  # template loop variables in scope
        self._item_vars: set[str] = set()  # those of them that are catalogue items
        self._recommending = False  # checking an action with items: recommend(...)

    def error(self, message: str, pos: ast.Pos) -> None:
        self.diagnostics.append(Diagnostic("error", message, pos))

    def warning(self, message: str, pos: ast.Pos) -> None:
        self.diagnostics.append(Diagnostic("warning", message, pos))

    # ---- stage 1: declarations ------------------------------------------------
    def collect(self, modules: list[ast.Module]) -> None:
        seen: dict[str, tuple[str, ast.Pos]] = {}

        def declare(kind: str, name: str, pos: ast.Pos) -> bool:
            if name in seen:
                other_kind, other = seen[name]
                article = "an" if other_kind[0] in "aeiou" else "a"
                self.error(f"{kind} '{name}' is already defined as {article} {other_kind} "
                           f"at {other}", pos)
                return False
            seen[name] = (kind, pos)
            return True

        for module in modules:
            for item in module.items:
                if isinstance(item, ast.SchemaBlock):
                    self._collect_schema(item)
                elif isinstance(item, ast.EventsDef):
                    for name in item.names:
                        self.out.events.setdefault(name, item.pos)
                    if len(self.out.events) > MAX_EVENT_TYPES:
                        self.error(f"at most {MAX_EVENT_TYPES} event types (what a profile "
                                   "keeps)", item.pos)
                elif isinstance(item, ast.PlacementDef):
                    if declare("placement", item.name, item.pos):
                        self.out.placements[item.name] = item
                elif isinstance(item, ast.SegmentDef):
                    if declare("segment", item.name, item.pos):
                        self.out.segments[item.name] = item
                elif isinstance(item, ast.ActionDef):
                    if declare("action", item.name, item.pos):
                        self.out.actions[item.name] = item
                elif isinstance(item, ast.ExperimentDef) and declare(
                    "experiment", item.name, item.pos
                ):
                    self.out.experiments[item.name] = item
                elif isinstance(item, ast.PolicyDef):
                    self.out.policies.extend(item.rules)
                elif isinstance(item, ast.ClusterDef):
                    owner_cluster = self.out.clusters.setdefault(item.name, item)
                    if owner_cluster is not item:
                        self.error(f"cluster '{item.name}' is already defined at "
                                   f"{owner_cluster.pos}", item.pos)
                elif isinstance(item, ast.ScoreDef):
                    owner_score = self.out.scores.setdefault(item.name, item)
                    if owner_score is not item:
                        self.error(f"score '{item.name}' is already defined at "
                                   f"{owner_score.pos}", item.pos)
                elif isinstance(item, ast.ModelDef):
                    owner = self.out.models.setdefault(item.placement, item)
                    if owner is not item:
                        self.error(f"placement '{item.placement}' already has a model at "
                                   f"{owner.pos}", item.pos)

    def _collect_schema(self, block: ast.SchemaBlock) -> None:
        table = {"profile": self.out.profile, "context": self.out.context,
                 "thresholds": self.out.thresholds, "items": self.out.items}[block.kind]
        builtins = {"profile": PROFILE_BUILTINS, "context": CONTEXT_BUILTINS,
                    "items": ITEM_BUILTINS}.get(block.kind, {})
        self.out.items_declared |= block.kind == "items"
        for decl in block.fields:
            if decl.name in table or decl.name in builtins:
                self.error(f"{block.kind} attribute '{decl.name}' is declared twice", decl.pos)
                continue
            default: object = None
            if decl.default is not None and decl.type in ("list", "map"):
                self.error(f"a {decl.type} attribute has no default: a missing {decl.type} "
                           "is null", decl.default.pos)
            elif decl.default is not None:
                expected = {"number": "number", "string": "string", "bool": "bool"}.get(decl.type)
                if decl.type == "timestamp" or decl.default.kind != expected:
                    self.error(
                        f"default for {decl.type} attribute '{decl.name}' must be a "
                        f"{decl.type if decl.type != 'timestamp' else 'missing (no default)'}"
                        f" literal, not {decl.default.kind}",
                        decl.default.pos,
                    )
                else:
                    default = decl.default.value
            if block.kind == "thresholds" and default is None and decl.default is None:
                self.error(f"threshold '{decl.name}' needs a default value (thresholds.toml "
                           "may override it)", decl.pos)
            table[decl.name] = FieldSpec(decl.name, decl.type, decl.pii, default, decl.pos)

    # ---- stage 2: references and types --------------------------------------------
    def check_items(self) -> None:
        out = self.out
        for placement in out.placements.values():
            if not placement.channels:
                self.error(f"placement '{placement.name}' needs 'channels: ...'", placement.pos)
            if placement.slots < 1:
                self.error("slots must be at least 1", placement.pos)
            if placement.attribution is not None:
                self._attribution(float(placement.attribution.value),  # type: ignore[arg-type]
                                  placement.field_pos.get("attribution", placement.pos))
            if placement.rank is not None:
                t = self._type(placement.rank, set(), allow_action=True)
                if t.name not in ("number", "error"):
                    self.error(f"'rank' must be a number, not {t}", placement.rank.pos)
        for segment in out.segments.values():
            refs: set[str] = set()
            self._expect_bool(segment.condition, refs, "segment condition")
            out.segment_refs[segment.name] = refs
        for action in out.actions.values():
            self._check_action(action)
        for placement in out.placements.values():
            fallback = placement.fallback
            if fallback is None:
                continue
            where = placement.field_pos.get("fallback", placement.pos)
            target = out.actions.get(fallback)
            if target is None:
                self.error(f"unknown action '{fallback}'{_suggest(fallback, out.actions)}", where)
            elif placement.name not in target.placements:
                self.error(f"fallback '{fallback}' is not an action of placement "
                           f"'{placement.name}'", where)
        for experiment in out.experiments.values():
            self._check_experiment(experiment)
        self._check_policies()
        for model in out.models.values():
            self._check_model(model)
        for cluster in out.clusters.values():
            self._check_cluster(cluster)
        for score in out.scores.values():
            self._check_score(score)

    def _check_score(self, score: ast.ScoreDef) -> None:
        """One label or target over a declared event, a positive window, and features
        like a cluster's."""
        if score.label is not None and score.target is not None:
            self.error("a score has a label (a yes/no outcome) or a target (a number), "
                       "not both", score.field_pos["target"])
        outcome = score.outcome
        if outcome is None:
            self.error(f"score '{score.name}' needs 'label: no EVENT within D', 'label: EVENT "
                       "within D' or 'target: sum(EVENT.value) within D'", score.pos)
        else:
            if outcome.event not in self.out.events:
                self.error(f"unknown event '{outcome.event}'"
                           f"{_suggest(outcome.event, self.out.events)} (declare it with "
                           "'events: ...')", outcome.pos)
            if not 0 < float(outcome.window.value) <= MAX_SCORE_WINDOW:  # type: ignore[arg-type]
                self.error(f"a score's window is 1s to {int(MAX_SCORE_WINDOW // 86400)}d",
                           outcome.window.pos)
        self._check_features(score.features, f"score '{score.name}'", score.pos, "a score")

    def _check_cluster(self, cluster: ast.ClusterDef) -> None:
        """Per-customer number features (the profile, events, now: no context, no
        segment), 2 to MAX_CLUSTERS clusters, and a name for each when names are given."""
        pos = cluster.field_pos
        self._check_features(cluster.features, f"cluster '{cluster.name}'", cluster.pos,
                             "a cluster")
        if not 2 <= cluster.k <= MAX_CLUSTERS:
            self.error(f"k is the number of clusters: 2 to {MAX_CLUSTERS}",
                       pos.get("k", cluster.pos))
        if cluster.names:
            if len(cluster.names) != cluster.k:
                self.error(f"{len(cluster.names)} names for k: {cluster.k} clusters",
                           pos["names"])
            if len(set(cluster.names)) != len(cluster.names):
                self.error("cluster names must differ", pos["names"])

    def _check_features(self, features: tuple[ast.ClusterFeature, ...], owner: str,
                        pos: ast.Pos, what: str) -> None:
        """Named per-customer number features: the profile, events and now; no context,
        segment, cluster or score."""
        if not features:
            self.error(f"{owner} needs 'features: NAME = EXPR, ...'", pos)
        seen: set[str] = set()
        for feature in features:
            if feature.name in seen:
                self.error(f"feature '{feature.name}' is named twice", feature.pos)
            seen.add(feature.name)
            refs: set[str] = set()
            t = self._type(feature.expr, refs)
            if t.name not in ("number", "error"):
                self.error(f"{what} feature is a number, not {t}", feature.expr.pos)
            if refs:
                self.error(f"{what} feature reads the customer (profile, events), not "
                           f"segments ({', '.join(sorted(refs))})", feature.expr.pos)
            for node in ast.walk(feature.expr):
                if isinstance(node, ast.Ref) and node.parts[0] in ("context", "cluster",
                                                                    "score"):
                    self.error(f"{what} feature reads the customer (profile, events), not "
                               f"{node.parts[0]}.", node.pos)

    def _check_model(self, model: ast.ModelDef) -> None:
        pos = model.field_pos
        if model.placement not in self.out.placements:
            self.error(f"unknown placement '{model.placement}'"
                       f"{_suggest(model.placement, self.out.placements)}", pos["placement"])
        if model.per not in MODEL_PER:
            self.error(f"per must be {' or '.join(MODEL_PER)}", pos.get("per", model.pos))
        if model.learner not in LEARNERS:
            self.error(f"unknown learner '{model.learner}': use {', '.join(LEARNERS)}"
                       f"{_suggest(model.learner, LEARNERS)}", pos.get("learner", model.pos))
        if model.bagging == 1 or model.bagging > 50:
            self.error("bagging takes from 2 to 50 members (0: no bagging)",
                       pos.get("bagging", model.pos))
        if model.hashed > 2**20:
            self.error("hashed takes at most 1048576 buckets", pos.get("hashed", model.pos))
        if "vocabulary" in pos and not 1 <= model.vocabulary <= MAX_MODEL_VOCABULARY:
            self.error(f"vocabulary takes from 1 to {MAX_MODEL_VOCABULARY:,} values per "
                       "feature", pos["vocabulary"])
        elif "vocabulary" in pos and model.hashed:
            self.error("vocabulary bounds one-hot values; a hashed model is bounded by its "
                       "buckets already: write one or the other", pos["vocabulary"])
        for name, where in model.features or ():
            if name == "segments":
                continue
            head, _, attr = name.partition(".")
            tables = {"profile": (self.out.profile, PROFILE_BUILTINS),
                      "context": (self.out.context, CONTEXT_BUILTINS)}
            if head not in tables or not attr:
                self.error(f"a feature is 'segments', 'profile.NAME' or 'context.NAME', "
                           f"not '{name}'", where)
                continue
            declared, builtins = tables[head]
            spec = declared.get(attr)
            kind = spec.type if spec is not None else builtins.get(attr, (None,))[0]
            if kind is None:
                self.error(f"unknown {head} attribute '{attr}'"
                           f"{_suggest(attr, [*declared, *builtins])}", where)
            elif kind not in FEATURE_TYPES:
                self.error(f"a {kind} cannot be a feature: use a number, bool, string or "
                           "list attribute", where)
            elif spec is not None and spec.pii and kind in ("string", "list"):
                self.error(f"{head}.{attr} is personal data (pii) and cannot be a one-hot "
                           f"feature: its values would become the names of model weights "
                           "and of stored decisions' features (a number or bool pii "
                           "attribute can: its values are not names)", where)

    def _check_action(self, action: ast.ActionDef) -> None:
        pos = action.field_pos
        if not action.placements:
            self.error(f"action '{action.name}' needs 'placements: ...'", action.pos)
        for i, name in enumerate(action.placements):
            if name not in self.out.placements:
                self.error(
                    f"unknown placement '{name}'{_suggest(name, self.out.placements)}",
                    pos.get("placements", action.pos),
                )
            elif name in action.placements[:i]:  # (a copy-paste slip, say)
                self.warning(f"placement '{name}' is listed twice",
                             pos.get("placements", action.pos))
        allowed = {c for p in action.placements if p in self.out.placements
                   for c in self.out.placements[p].channels}
        for channel in action.channels:
            if channel not in allowed:
                self.error(
                    f"channel '{channel}' is not a channel of placements "
                    f"{', '.join(action.placements)}{_suggest(channel, allowed)}",
                    pos.get("channels", action.pos),
                )
        refs: set[str] = set()
        if action.when is not None:
            self._expect_bool(action.when, refs, "'when'")
        if action.unless is not None:
            self._expect_bool(action.unless, refs, "'unless'")
        self._check_window(action)
        if action.consent:
            spec = self.out.profile.get("consents")
            if spec is None or spec.type != "list":
                self.error("'consent' needs a 'consents: list' attribute in the profile block",
                           pos["consent"])
        if action.value is None:
            self.error(f"action '{action.name}' needs 'value: ...'", action.pos)
        else:
            t = self._type(action.value, refs)
            if t.name not in ("number", "null", "error"):
                self.error(f"'value' must be a number, not {t}", action.value.pos)
        if action.weight < 0:
            self.error("'weight' must not be negative", pos.get("weight", action.pos))
        if action.prior is not None and not 0.0 < action.prior < 1.0:
            self.error("'prior' is a propensity: between 0 and 1 exclusive", pos["prior"])
        if action.cap is not None:
            if action.cap.limit < 1:
                self.error("a cap must allow at least 1 impression", action.cap.pos)
            self._contact_count(action.cap.limit, "a cap counts", action.cap.pos)
            self._contact_window(action.cap.window_seconds, "a cap", action.cap.pos)
        if action.cooldown is not None:
            self._contact_window(float(action.cooldown.value),  # type: ignore[arg-type]
                                 "a cooldown", action.cooldown.pos)
        if action.suppress is not None:
            if action.suppress.outcome not in ("impression", "click", "conversion", "dismiss"):
                self.error(f"unknown outcome '{action.suppress.outcome}': use impression, "
                           "click, conversion or dismiss", action.suppress.pos)
            if action.suppress.count < 1:
                self.error("suppress after at least 1 outcome", action.suppress.pos)
            self._contact_count(action.suppress.count, "a suppression counts",
                                action.suppress.pos)
            self._contact_window(float(action.suppress.window.value),  # type: ignore[arg-type]
                                 "a suppression", action.suppress.window.pos)
        if action.items is not None:
            self._check_recommend(action.items, refs)
        self._recommending = action.items is not None
        for content in action.content:
            self._check_parts(content.parts, refs)
        self._recommending = False
        self.out.segment_refs[f"action:{action.name}"] = refs

    def _check_recommend(self, reco: ast.Recommend, refs: set[str]) -> None:
        """``items: recommend(N, where: ..., exclude: EVENT within D)``."""
        if not self.out.items_declared:
            self.error("recommend() needs the catalogue's attributes: declare an "
                       "'items { ... }' block (name: string, price: number, ...)", reco.pos)
        if not 1 <= reco.count <= MAX_RECOMMENDED:
            self.error(f"recommend() returns 1 to {MAX_RECOMMENDED} items, not {reco.count}",
                       reco.pos)
        if reco.where is not None:
            self._item_vars.add("item")
            self._loop_vars.append("item")
            try:
                self._expect_bool(reco.where, refs, "'where'")
            finally:
                self._loop_vars.pop()
                self._item_vars.discard("item")
        for rule in reco.exclude:
            if rule.event not in self.out.events:
                self.error(f"unknown event '{rule.event}'{_suggest(rule.event, self.out.events)}"
                           " (declare it with 'events: ...')", rule.pos)
            if rule.window is not None and not 0 < rule.window.value <= EVENT_RETENTION_SECONDS:  # type: ignore[operator]
                self.error(f"an exclusion window is at most "
                           f"{int(EVENT_RETENTION_SECONDS // 86400)}d (the item history "
                           "a profile keeps)", rule.window.pos)

    def _check_policies(self) -> None:
        groups = {a.group for a in self.out.actions.values() if a.group}
        channels = {c for p in self.out.placements.values() for c in p.channels}
        seen: dict[tuple[str, str], ast.PolicyRule] = {}
        for rule in self.out.policies:
            known = groups if rule.scope == "group" else channels
            if rule.name not in known:
                hint = _suggest(rule.name, known)
                what = "no action is in group" if rule.scope == "group" else "unknown channel"
                self.error(f"{what} '{rule.name}'{hint}", rule.pos)
            key = (rule.scope, rule.name)
            if key in seen:
                self.error(f"{rule.scope} '{rule.name}' already has a policy at "
                           f"{seen[key].pos}", rule.pos)
            seen[key] = rule
            if rule.limit < 1:
                self.error("a policy must allow at least 1 contact", rule.pos)
            self._contact_window(float(rule.window.value),  # type: ignore[arg-type]
                                 "a policy", rule.window.pos)

    def _attribution(self, seconds: float, pos: ast.Pos) -> None:
        """A decision's record is kept this long: a second at least (feedback comes after
        the answer), at most as long as the contact history it writes to."""
        if seconds < 1:
            self.error("attribution must be at least 1s (how long a decision takes "
                       "feedback)", pos)
        elif seconds > CONTACT_RETENTION_SECONDS:
            self.error(f"attribution is at most {CONTACT_RETENTION_SECONDS / 86400:g}d (the "
                       "contact history a profile keeps)", pos)

    def _contact_window(self, seconds: float, what: str, pos: ast.Pos) -> None:
        """A window longer than the contact history kept would count too little, silently;
        one of no time would count nothing (a cooldown of ``0s`` never holds)."""
        if seconds <= 0:
            self.error(f"{what} of no time never holds: give it a duration (e.g. 1d)", pos)
        elif seconds > CONTACT_RETENTION_SECONDS:
            self.error(f"{what} looks back at most {CONTACT_RETENTION_SECONDS / 86400:g}d "
                       "(the contact history a profile keeps)", pos)

    def _contact_count(self, limit: int, what: str, pos: ast.Pos) -> None:
        """A limit above the contacts kept per action could never be reached."""
        if limit > MAX_CONTACTS_PER_ACTION:
            self.error(f"{what} at most {MAX_CONTACTS_PER_ACTION} contacts (the newest a "
                       "profile keeps per action)", pos)

    def _check_window(self, action: ast.ActionDef) -> None:
        bounds = {}
        for key in ("starts", "ends"):
            text = getattr(action, key)
            if text is None:
                continue
            try:
                bounds[key] = date_seconds(text)
            except ValueError:
                self.error(f"'{key}' is not a valid date: {text}", action.field_pos[key])
        if len(bounds) == 2 and bounds["starts"] >= bounds["ends"]:
            self.error("'ends' must be after 'starts'", action.field_pos["ends"])

    def _check_parts(self, parts: tuple[ast.TemplatePart, ...], refs: set[str]) -> None:
        for part in parts:
            if isinstance(part, ast.TemplateToken):
                self._check_token(part, refs)
            elif isinstance(part, ast.TemplateIf):
                t = self._type(part.condition, refs, allow_action=True)
                if t.name not in ("bool", "error"):
                    self.error(f"{{% if %}} needs true or false, not {t}", part.condition.pos)
                self._check_parts(part.then, refs)
                self._check_parts(part.otherwise, refs)
            elif isinstance(part, ast.TemplateFor):
                t = self._type(part.items, refs, allow_action=True)
                if t.name not in ("list", "error"):
                    self.error(f"{{% for %}} needs a list, not {t}", part.items.pos)
                if part.var in self._loop_vars or part.var in self.out.segments:
                    self.error(f"'{part.var}' is already a name here; pick another loop "
                               "variable", part.pos)
                self._loop_vars.append(part.var)
                if t.item == "item":
                    self._item_vars.add(part.var)
                self._check_parts(part.body, refs)
                self._item_vars.discard(part.var)
                self._loop_vars.pop()

    def _check_token(self, token: ast.TemplateToken, refs: set[str]) -> None:
        t = self._type(token.expr, refs, allow_action=True)
        joined = any(name == "join" for name, _ in token.filters)
        if t.name == "list" and not joined:
            self.error("a content token must be a single value: write | join(\", \") or "
                       "loop with {% for %}", token.expr.pos)
        if joined and t.name not in ("list", "error"):
            self.error(f"join needs a list, not {t}", token.pos)
        flowing = t.name  # the value's type as it goes through the filters
        for name, args in token.filters:
            if name not in FILTERS:
                self.error(f"unknown filter '{name}'{_suggest(name, FILTERS)}", token.pos)
            elif len(args) != FILTERS[name]:
                self.error(f"filter '{name}' takes {FILTERS[name]} argument(s)", token.pos)
            elif name == "round" and args[0].kind != "number":
                self.error("round(n) takes a number of decimals", args[0].pos)
            elif name == "round" and flowing not in ("number", "duration", "null", "error"):
                self.error(f"round needs a number, not {flowing} (it would print the value "
                           "unrounded)", token.pos)  # (it did, without a word)
            if name in ("upper", "lower", "title", "join"):
                flowing = "string"
            elif name == "default" and args and args[0].kind != flowing:
                flowing = "error"  # either type: nothing more to say about it

    def _check_experiment(self, exp: ast.ExperimentDef) -> None:
        pos = exp.field_pos
        if exp.placement not in self.out.placements:
            hint = _suggest(exp.placement, self.out.placements)
            self.error(f"unknown placement '{exp.placement}'{hint}", pos["placement"])
        if len(exp.arms) < 2:
            self.error("an experiment needs at least 2 arms", pos.get("arms", exp.pos))
        if len(set(exp.arms)) != len(exp.arms):
            self.error("an arm is listed twice", pos.get("arms", exp.pos))
        for arm in exp.arms:
            action = self.out.actions.get(arm)
            if action is None:
                self.error(
                    f"unknown action '{arm}'{_suggest(arm, self.out.actions)}",
                    pos.get("arms", exp.pos),
                )
            elif exp.placement not in action.placements:
                self.error(
                    f"arm '{arm}' is not an action of placement '{exp.placement}'",
                    pos.get("arms", exp.pos),
                )
        if exp.weights:
            if len(exp.weights) != len(exp.arms):
                self.error(f"{len(exp.weights)} weight(s) for {len(exp.arms)} arms",
                           pos.get("allocate", exp.pos))
            if any(w < 0 for w in exp.weights) or sum(exp.weights) <= 0:
                self.error("weights must be non-negative and not all zero",
                           pos.get("allocate", exp.pos))
        if not 0 < exp.traffic <= 100:
            self.error("traffic is a percentage from more than 0% to 100%",
                       pos.get("traffic", exp.pos))
        if not 0 <= exp.holdout < 100:
            self.error("holdout is a percentage from 0% to less than 100%",
                       pos.get("holdout", exp.pos))
        placement = self.out.placements.get(exp.placement)
        if exp.holdout > 0 and placement is not None and placement.fallback is None:
            self.warning(f"placement '{exp.placement}' has no fallback, so the holdout's "
                         "customers are shown nothing and no outcome is counted for them: "
                         "the report cannot compare the arms with the holdout (give the "
                         "placement a fallback)", pos.get("holdout", exp.pos))
        kind, params = exp.prior
        if kind == "beta" and min(params) <= 0:
            self.error("beta prior parameters must be positive", pos.get("allocate", exp.pos))
        if kind == "normal_gamma" and min(params[1:]) <= 0:
            self.error("normal_gamma(mu, kappa, alpha, beta): kappa, alpha and beta must be "
                       "positive", pos.get("allocate", exp.pos))
        if kind == "normal_gamma" and not exp.reward_value:
            self.error("a normal_gamma prior is for a continuous reward: write "
                       f"'reward: {exp.reward}.value'", pos.get("allocate", exp.pos))
        if kind == "beta" and exp.reward_value and "allocate" in pos:
            self.error("a beta prior is for a binary reward; a continuous reward "
                       f"('{exp.reward}.value') takes normal_gamma(mu, kappa, alpha, beta)",
                       pos.get("allocate", exp.pos))
        for name in ("window", "half_life"):
            span = getattr(exp, name)
            if span is not None and float(span.value) < 3600:
                self.error(f"{name} must be at least 1h (statistics are kept in hourly buckets)",
                           pos.get(name, exp.pos))
        if exp.winner is not None and exp.winner not in exp.arms:
            self.error(f"winner '{exp.winner}' is not one of the arms "
                       f"({', '.join(exp.arms)})", pos.get("winner", exp.pos))
        if exp.reward not in REWARD_OUTCOMES:
            self.error(
                f"reward must be one of {', '.join(REWARD_OUTCOMES)}", pos.get("reward", exp.pos)
            )
        owner = self._experiment_by_placement.setdefault(exp.placement, exp)
        if owner is not exp:
            self.error(
                f"placement '{exp.placement}' already has experiment '{owner.name}' "
                f"({owner.pos}); one experiment per placement",
                exp.pos,
            )

    # ---- stage 3: cycles and unused -------------------------------------------
    def check_graph(self) -> None:
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*path[path.index(name):], name])
                self.error(f"segments refer to each other in a cycle: {cycle}",
                           self.out.segments[name].pos)
                return
            state[name] = 1
            for ref in sorted(self.out.segment_refs.get(name, ())):
                if ref in self.out.segments:
                    visit(ref, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self.out.segments:
            visit(name, [])
        self.out.segment_order = order

        used = {ref for refs in self.out.segment_refs.values() for ref in refs}
        for name, segment in self.out.segments.items():
            if name not in used:
                self.warning(f"segment '{name}' is not used by any action or segment",
                             segment.pos)
        for name, placement in self.out.placements.items():
            if not any(name in a.placements for a in self.out.actions.values()):
                self.warning(f"placement '{name}' has no actions", placement.pos)

    # ---- expression typing --------------------------------------------------------
    def _expect_bool(self, expr: ast.Expr, refs: set[str], what: str) -> None:
        t = self._type(expr, refs)
        if t.name not in ("bool", "error"):
            self.error(f"{what} must be true or false, not {t}", expr.pos)

    def _set(self, node: ast.Expr, t: Type) -> Type:
        self.out.types[id(node)] = t
        return t

    def _type(self, node: ast.Expr, refs: set[str], allow_action: bool = False) -> Type:
        return self._set(node, self._infer(node, refs, allow_action))

    def _infer(self, node: ast.Expr, refs: set[str], allow_action: bool) -> Type:
        if isinstance(node, ast.Literal):
            kind = "null" if node.kind == "null" else node.kind
            return Type(kind, node.kind == "null")
        if isinstance(node, ast.Now):
            return Type("timestamp", False)
        if isinstance(node, ast.Ref):
            return self._ref(node, refs, allow_action)
        if isinstance(node, ast.Index):
            target = self._type(node.target, refs, allow_action)
            if target.name not in ("map", "error"):
                self.error(f"only a map can be indexed, not {target}", node.pos)
            return Type("string", True)  # a missing key is null
        if isinstance(node, ast.ListExpr):
            items = [self._type(i, refs, allow_action) for i in node.items]
            kinds = {t.name for t in items}
            if len(kinds) > 1:
                self.error(f"list items must all have one type, found {', '.join(sorted(kinds))}",
                           node.pos)
            for item in node.items:
                if not isinstance(item, ast.Literal):
                    self.error("list items must be constants", item.pos)
            return Type("list", False, items[0].name if items else "null")
        if isinstance(node, ast.Unary):
            return self._unary(node, refs, allow_action)
        if isinstance(node, ast.BoolOp):
            types = [self._type(o, refs, allow_action) for o in node.operands]
            for operand, t in zip(node.operands, types, strict=True):
                if t.name not in ("bool", "error"):
                    self.error(f"'{node.op}' needs true/false on both sides, not {t}", operand.pos)
            return Type("bool", any(t.nullable for t in types))
        if isinstance(node, ast.Binary):
            return self._binary(node, refs, allow_action)
        if isinstance(node, ast.Call):
            return self._call(node, refs, allow_action)
        raise TypeError(f"unknown node {node!r}")  # pragma: no cover

    def _ref(self, node: ast.Ref, refs: set[str], allow_action: bool) -> Type:
        head, *rest = node.parts
        if head == "thresholds" and len(rest) == 1:
            spec0 = self.out.thresholds.get(rest[0])
            if spec0 is None:
                self.error(f"unknown threshold '{rest[0]}'"
                           f"{_suggest(rest[0], self.out.thresholds)} (declare it in a "
                           "thresholds block)", node.pos)
                return ERROR
            return Type(spec0.type, False)
        if head == "score" and len(rest) == 1:
            if rest[0] not in self.out.scores:
                self.error(f"unknown score '{rest[0]}'{_suggest(rest[0], self.out.scores)}"
                           " (declare it with 'score NAME { ... }')", node.pos)
                return ERROR
            return Type("number", True)  # null until the score has learnt enough labels
        if head == "cluster" and len(rest) == 1:
            found = self.out.clusters.get(rest[0])
            if found is None:
                self.error(f"unknown cluster '{rest[0]}'{_suggest(rest[0], self.out.clusters)}"
                           " (declare it with 'cluster NAME { ... }')", node.pos)
                return ERROR
            # null until the clusters are learnt, or when a feature is unknown
            return Type("string" if found.names else "number", True)
        if head in ("profile", "context", "action") and len(rest) == 1:
            name = rest[0]
            if head == "action":
                if not allow_action:
                    self.error("'action.' fields can only be used in a placement's 'rank' "
                               "and in content templates", node.pos)
                    return ERROR
                spec = ACTION_FIELDS.get(name)
                if spec is None:
                    self.error(f"unknown action field '{name}'{_suggest(name, ACTION_FIELDS)}",
                               node.pos)
                    return ERROR
                return Type(*spec)
            table = self.out.profile if head == "profile" else self.out.context
            builtins = PROFILE_BUILTINS if head == "profile" else CONTEXT_BUILTINS
            if name in builtins:
                return Type(*builtins[name])
            spec2 = table.get(name)
            if spec2 is None:
                self.error(
                    f"unknown {head} attribute '{name}'"
                    f"{_suggest(name, [*table, *builtins])}"
                    f" (declare it in the {head} block)",
                    node.pos,
                )
                return ERROR
            return Type(spec2.type, spec2.nullable, "string" if spec2.type == "list" else None)
        if head in self._item_vars and len(rest) == 1:
            return self._item_ref(node, rest[0])
        if len(node.parts) == 1:
            if head in self._item_vars:
                self.error(f"'{head}' is an item: write {head}.NAME (one of "
                           f"{', '.join([*ITEM_BUILTINS, *self.out.items])})", node.pos)
                return ERROR
            if head in self._loop_vars:
                self.out.loop_refs.add(id(node))
                return Type("string", False)
            if head == "recommended" and self._recommending and head not in self.out.segments:
                self.out.loop_refs.add(id(node))
                return Type("list", False, "item")
            if head == "recommended" and head not in self.out.segments:
                self.error("'recommended' is an action's recommended items: give the action "
                           "'items: recommend(N)' and use it in its content", node.pos)
                return ERROR
            if head in self.out.segments:
                refs.add(head)
                return Type("bool", False)
            self.error(f"unknown segment '{head}'{_suggest(head, self.out.segments)}", node.pos)
            return ERROR
        self.error(f"unknown name '{'.'.join(node.parts)}': use profile.NAME, context.NAME, "
                   "thresholds.NAME or a segment name", node.pos)
        return ERROR

    def _item_ref(self, node: ast.Ref, name: str) -> Type:
        """``item.NAME``: a catalogue item's attribute (recommend's ``where``, a loop over
        ``recommended``), its ``id``, or the ``score`` and ``reason`` it was recommended
        with."""
        spec = ITEM_BUILTINS.get(name) or RECOMMENDED_FIELDS.get(name)
        if spec is not None:
            self.out.item_refs.add(id(node))
            return Type(*spec)
        declared = self.out.items.get(name)
        if declared is None:
            known = [*ITEM_BUILTINS, *self.out.items, *RECOMMENDED_FIELDS]
            self.error(f"unknown item attribute '{name}'{_suggest(name, known)} (declare it "
                       "in the items block)", node.pos)
            return ERROR
        self.out.item_refs.add(id(node))
        return Type(declared.type, declared.nullable,
                    "string" if declared.type == "list" else None)

    def _unary(self, node: ast.Unary, refs: set[str], allow_action: bool) -> Type:
        t = self._type(node.operand, refs, allow_action)
        if t is ERROR:
            return Type("bool", True) if node.op != "-" else ERROR
        if node.op == "not":
            if t.name != "bool":
                self.error(f"'not' needs true/false, not {t}", node.operand.pos)
            return Type("bool", t.nullable)
        if node.op == "-":
            if t.name not in ("number", "duration"):
                self.error(f"cannot negate {t}", node.operand.pos)
            return Type(t.name, t.nullable)
        if not t.nullable:
            self.warning(f"this value is never null, so '{node.op}' is always "
                         f"{'true' if node.op == 'is not null' else 'false'}", node.pos)
        return Type("bool", False)  # is null / is not null

    def _binary(self, node: ast.Binary, refs: set[str], allow_action: bool) -> Type:
        left = self._type(node.left, refs, allow_action)
        right = self._type(node.right, refs, allow_action)
        nullable = left.nullable or right.nullable
        op = node.op
        if ERROR in (left, right):
            return ERROR if op in "+-*/" else Type("bool", True)
        if "null" in (left.name, right.name):
            if (left.name == "null" and right.name == "null") or op not in ("==", "!="):
                self.error(f"cannot use '{op}' with null", node.pos)
            else:
                self.error("compare with null using 'is null' or 'is not null'", node.pos)
            return Type("bool", True)
        if op in ("in", "not in"):
            if right.name != "list":
                self.error(f"'{op}' needs a list on the right, not {right}", node.right.pos)
            elif right.item not in (left.name, "null"):
                self.error(f"cannot look for a {left} in a list of {right.item}", node.pos)
            return Type("bool", left.nullable)
        if op in ("==", "!="):
            if left.name != right.name:
                self.error(f"cannot compare {left} with {right}", node.pos)
            return Type("bool", nullable)
        if op in ("<", "<=", ">", ">="):
            if left.name != right.name or left.name not in PLAIN_ORDERED:
                hint = ""
                if {left.name, right.name} == {"duration", "number"}:
                    hint = " (write the number with a unit, e.g. 24h or 30d)"
                self.error(f"cannot compare {left} with {right}{hint}", node.pos)
            return Type("bool", nullable)
        result = _ARITHMETIC.get((left.name, op, right.name))
        if result is None:
            self.error(f"cannot compute {left} {op} {right}", node.pos)
            return Type("number", True)
        # division by zero yields null, so '/' is nullable
        return Type(result, nullable or op == "/")

    def _event_arg(self, node: ast.Call, allow_property: bool) -> str | None:
        if not node.args or not isinstance(node.args[0], ast.Ref):
            self.error(f"{node.name}() needs an event name as its first argument", node.pos)
            return None
        ref = node.args[0]
        name = ref.parts[0]
        if len(ref.parts) > 1:
            if not allow_property or ref.parts[1:] != ("value",):
                self.error(f"{node.name}() takes an event name"
                           + (" or EVENT.value" if allow_property else ""), ref.pos)
        elif allow_property:
            self.error(f"{node.name}() sums a property: write {name}.value", ref.pos)
        if name not in self.out.events:
            self.error(f"unknown event '{name}'{_suggest(name, self.out.events)}"
                       " (declare it with 'events: ...')", ref.pos)
            return None
        return name

    def _percentile(self, node: ast.Call, refs: set[str], allow_action: bool) -> Type:
        """``percentile(AGGREGATE, P)``: the P-th percentile of an all-time per-customer
        aggregate over the population (engine.decide.population)."""
        if node.kwargs or len(node.args) != 2:
            self.error("percentile() takes an aggregate and a percent: "
                       "percentile(sum(purchase.value), 80)", node.pos)
            return ERROR
        aggregate, percent = node.args
        self._type(aggregate, refs, allow_action)
        key = population_key(aggregate)
        if key is None:
            self.error("percentile() reads count(EVENT), sum(EVENT.value) (all time: no "
                       "'within') or a number attribute profile.NAME", aggregate.pos)
        elif key.startswith("profile:") and self.out.profile.get(key[8:], None) is not None \
                and self.out.profile[key[8:]].type != "number":
            self.error(f"percentile() needs a number; profile.{key[8:]} is a "
                       f"{self.out.profile[key[8:]].type}", aggregate.pos)
        else:
            self.out.population[key] = print_expr(aggregate)
        if not (isinstance(percent, ast.Literal) and percent.kind == "number"
                and 0 <= float(percent.value) <= 100):  # type: ignore[arg-type]
            self.error("percentile()'s second argument is a number from 0 to 100", percent.pos)
        else:
            self._set(percent, Type("number", False))
        return Type("number", True)  # null until the population has data

    def _call(self, node: ast.Call, refs: set[str], allow_action: bool) -> Type:
        name = node.name
        kwargs = dict(node.kwargs)
        if name == "percentile":
            return self._percentile(node, refs, allow_action)
        if name in ("count", "sum", "last", "first"):
            self._event_arg(node, allow_property=name == "sum")
            allowed = {"within"} if name in ("count", "sum") else set()
            for key, value in kwargs.items():
                if key not in allowed:
                    self.error(f"{name}() has no argument '{key}'", value.pos)
                elif not (isinstance(value, ast.Literal) and value.kind == "duration"):
                    self.error("'within' must be a duration such as 7d or 24h", value.pos)
                elif float(value.value) <= 0:  # type: ignore[arg-type]
                    self.error(f"'within' of {value.text or value.value} counts nothing: a "
                               "window is at least 1s", value.pos)
                elif float(value.value) > EVENT_RETENTION_SECONDS:  # type: ignore[arg-type]
                    self.error(f"'within' of {value.text or value.value} is longer than the "
                               f"{EVENT_RETENTION_SECONDS / 86400:g}d of events kept per "
                               f"customer; {name}() without 'within' counts all time",
                               value.pos)
                else:
                    self._set(value, Type("duration", False))
            if len(node.args) != 1:
                self.error(f"{name}() takes one event", node.pos)
            for arg in node.args:
                self._set(arg, Type("null", True))
            if name in ("count", "sum"):
                return Type("number", False)
            return Type("timestamp", True)
        signature = _FUNCTIONS.get(name)
        if signature is None:
            self.error(f"unknown function '{name}'{_suggest(name, FUNCTION_NAMES)}", node.pos)
            return ERROR
        params, result = signature
        if kwargs:
            self.error(f"{name}() takes no named arguments", node.pos)
        if len(node.args) != len(params):
            self.error(f"{name}() takes {len(params)} argument(s)", node.pos)
            return Type(result, True)
        types = [self._type(a, refs, allow_action) for a in node.args]
        for arg, t, want in zip(node.args, types, params, strict=True):
            if want != "any" and t.name not in (want, "error"):
                self.error(f"{name}() needs a {want} here, not {t}", arg.pos)
        if name == "coalesce":
            if types[0].name != types[1].name:
                self.error("coalesce() needs two values of one type", node.pos)
            return Type(types[0].name, types[1].nullable and types[0].nullable)
        return Type(result, name in _MAY_BE_NULL or any(t.nullable for t in types))


_ARITHMETIC: dict[tuple[str, str, str], str] = {
    ("number", "+", "number"): "number",
    ("number", "-", "number"): "number",
    ("number", "*", "number"): "number",
    ("number", "/", "number"): "number",
    ("duration", "+", "duration"): "duration",
    ("duration", "-", "duration"): "duration",
    ("duration", "*", "number"): "duration",
    ("number", "*", "duration"): "duration",
    ("duration", "/", "number"): "duration",
    ("duration", "/", "duration"): "number",
    ("timestamp", "-", "timestamp"): "duration",
    ("timestamp", "+", "duration"): "timestamp",
    ("timestamp", "-", "duration"): "timestamp",
    ("string", "+", "string"): "string",
}

# name -> (parameter types, result type); event functions are checked separately
_FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "days_since": (("timestamp",), "number"),
    "hours_since": (("timestamp",), "number"),
    "hour_of_day": (("timestamp",), "number"),
    "day_of_week": (("timestamp",), "number"),
    "best_send_hour": ((), "number"),
    "contains": (("string", "string"), "bool"),
    "starts_with": (("string", "string"), "bool"),
    "ends_with": (("string", "string"), "bool"),
    "lower": (("string",), "string"),
    "upper": (("string",), "string"),
    "coalesce": (("any", "any"), "any"),
}
FUNCTION_NAMES = frozenset([*_FUNCTIONS, "count", "sum", "last", "first", "percentile"])


def population_key(aggregate: ast.Expr) -> str | None:
    """The population statistic a percentile() reads: ``count:EVENT``, ``sum:EVENT`` or
    ``profile:NAME``; None for anything else (a windowed count changes without events,
    so no one could keep its population up to date)."""
    if isinstance(aggregate, ast.Call) and aggregate.name in ("count", "sum") \
            and not aggregate.kwargs and len(aggregate.args) == 1 \
            and isinstance(aggregate.args[0], ast.Ref):
        return f"{aggregate.name}:{aggregate.args[0].parts[0]}"
    if isinstance(aggregate, ast.Ref) and aggregate.parts[0] == "profile" \
            and len(aggregate.parts) == 2:
        return f"profile:{aggregate.parts[1]}"
    return None
_MAY_BE_NULL = frozenset({"best_send_hour", "hour_of_day", "day_of_week"})
"""Null even from non-null arguments: no engagement yet; a time no calendar holds."""


def check(modules: list[ast.Module]) -> tuple[CheckedRuleset, list[Diagnostic]]:
    """Run every check over the parsed modules of one ruleset."""
    checker = Checker()
    checker.collect(modules)
    checker.check_items()
    checker.check_graph()
    return checker.out, checker.diagnostics
