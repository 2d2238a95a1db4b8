"""Checked AST → :class:`~dsl.ruleset.Ruleset`: conditions become Python functions.

Each expression is translated to one Python expression and compiled once with
:func:`compile`, so evaluating a rule costs about what a hand-written function
costs. Constants are folded by CPython's compiler; ``and``/``or`` short-circuit;
null-aware helpers (:mod:`dsl.runtime`) are used only where the checker says a
value can be missing. Names from rule files never reach the generated source
except as ``repr()`` string constants.

>>> from dsl.loader import load_text
>>> rs = load_text('''
... profile { spend: number = 0 }
... segment big = profile.spend > 500
... ''')
>>> rs.segments[0].fn({"spend": 900.0}, {}, {}, {}, 0.0, None)
True
"""

from __future__ import annotations

from typing import Any

from dsl import ast
from dsl.checker import CheckedRuleset
from dsl.emitter import Emitter
from dsl.lint import walk
from dsl.printer import print_expr
from dsl.ruleset import (
    Action,
    BetaPrior,
    ClusterSpec,
    CompiledFn,
    Experiment,
    FrequencyCap,
    Limit,
    ModelSpec,
    NormalGammaPrior,
    Placement,
    Prior,
    RecommendSpec,
    Ruleset,
    ScoreSpec,
    Segment,
    Suppression,
    Template,
    TemplateFor,
    TemplateIf,
    TemplateToken,
)
from dsl.runtime import HELPERS
from dsl.units import date_seconds
from dsl.vocabulary import DEFAULT_PRIOR, MODEL_VOCABULARY

ARGS = "A, C, E, S, now, X=None"


class Compiler:
    """Builds the generated module for a checked ruleset and wraps its functions."""

    def __init__(self, checked: CheckedRuleset, sources: dict[str, str]) -> None:
        self.checked = checked
        self.sources = sources
        self.constants: dict[str, Any] = {}
        self.emitter = Emitter(checked, self.constants)
        self.defs: list[str] = []
        self._template_fns: dict[int, str] = {}  # id(expression node) -> function name

    def function(self, node: ast.Expr) -> str:
        name = f"f{len(self.defs)}"
        self.defs.append(f"def {name}({ARGS}):\n    return {self.emitter.emit(node)}\n")
        return name

    def build(self, revision: str, warnings: tuple[str, ...], cost: int = 0) -> Ruleset:
        """Emit every function, compile them in one module, assemble the ruleset."""
        checked = self.checked
        seg_fns = {name: self.function(checked.segments[name].condition)
                   for name in checked.segment_order}
        rank_fns = {p.name: self.function(p.rank) for p in checked.placements.values()
                    if p.rank is not None}
        action_fns = {a.name: self._declare_action(a) for a in checked.actions.values()}
        cluster_fns = {c.name: [self.function(f.expr) for f in c.features]
                       for c in checked.clusters.values()}
        score_fns = {sc.name: [self.function(f.expr) for f in sc.features]
                     for sc in checked.scores.values()}
        namespace = self._exec()
        segments = tuple(
            Segment(name, namespace[seg_fns[name]], checked.segments[name].pos,
                    print_expr(checked.segments[name].condition))
            for name in checked.segment_order
        )
        actions = {a.name: self._action(a, action_fns[a.name], namespace)
                   for a in checked.actions.values()}
        placements = {p.name: self._placement(p, actions, namespace.get(rank_fns.get(p.name, "")))
                      for p in checked.placements.values()}
        experiments = {e.name: _experiment(e) for e in checked.experiments.values()}
        return Ruleset(
            revision=revision,
            profile_schema=dict(checked.profile),
            context_schema=dict(checked.context),
            events=frozenset(checked.events),
            segments=segments,
            actions=actions,
            placements=placements,
            experiments=experiments,
            experiment_by_placement={e.placement: e for e in experiments.values()},
            layers={layer: tuple(sorted(e.name for e in experiments.values() if e.layer == layer))
                    for layer in {e.layer for e in experiments.values() if e.layer}},
            sources=dict(self.sources),
            warnings=warnings,
            cost=cost,
            attribute_defaults={k: v.default for k, v in checked.profile.items()},
            context_defaults={k: v.default for k, v in checked.context.items()},
            group_caps=_policy_limits(checked, "group", self.sources),
            channel_caps=_policy_limits(checked, "channel", self.sources),
            models={m.placement: _model(m) for m in checked.models.values()},
            groups={g: tuple(sorted(a.id for a in actions.values() if a.group == g))
                    for g in {a.group for a in actions.values() if a.group}},
            population=dict(sorted(checked.population.items())),
            item_schema=dict(checked.items),
            clusters={c.name: ClusterSpec(
                c.name, tuple(f.name for f in c.features),
                tuple(namespace[fn] for fn in cluster_fns[c.name]), c.k, c.names, c.pos)
                for c in checked.clusters.values()},
            scores={sc.name: _score(sc, tuple(namespace[fn] for fn in score_fns[sc.name]))
                    for sc in checked.scores.values() if sc.outcome is not None},
            items_declared=checked.items_declared,
        )

    def _declare_action(self, a: ast.ActionDef) -> dict[str, str | None]:
        """The names of the action's generated functions (its templates' kept by node)."""
        for content in a.content:
            self._declare_template(content.parts)
        where = a.items.where if a.items is not None else None
        return {clause: self.function(expr) if expr is not None else None
                for clause, expr in (("when", a.when), ("unless", a.unless), ("value", a.value),
                                     ("where", where))}

    def _action(self, a: ast.ActionDef, fns: dict[str, str | None],
                namespace: dict[str, Any]) -> Action:
        def fn(clause: str) -> CompiledFn | None:
            name = fns[clause]
            return None if name is None else namespace[name]

        return Action(
            id=a.name,
            placements=frozenset(a.placements),
            channels=frozenset(a.channels) if a.channels else None,
            when=fn("when"),
            when_source=print_expr(a.when) if a.when is not None else "",
            when_pos=a.field_pos.get("when", a.pos),
            unless=fn("unless"),
            unless_source=print_expr(a.unless) if a.unless is not None else "",
            unless_pos=a.field_pos.get("unless", a.pos),
            starts=date_seconds(a.starts) if a.starts else None,
            ends=date_seconds(a.ends) if a.ends else None,
            tags=a.tags,
            consent=a.consent,
            group=a.group,
            cooldown=_cooldown(a),
            suppress=_suppression(a.suppress),
            value=fn("value") or (lambda *args: 0.0),
            weight=a.weight,
            priority=a.priority,
            prior=a.prior if a.prior is not None else DEFAULT_PRIOR,
            cap=_cap(a.cap),
            content=tuple((c.name, self._template(c.parts, namespace, c.html))
                          for c in a.content),
            pos=a.pos,
            segments=tuple(sorted(self.checked.segment_refs.get(f"action:{a.name}", ()))),
            when_segments=_segments_in(a.when, self.checked),
            recommend=_recommend(a.items, fn("where")),
            definition=a,
        )

    @staticmethod
    def _placement(p: ast.PlacementDef, actions: dict[str, Action],
                   rank: CompiledFn | None) -> Placement:
        return Placement(
            p.name, frozenset(p.channels), p.slots,
            tuple(sorted((x for x in actions.values() if p.name in x.placements),
                         key=lambda x: (-x.priority, x.id))),
            p.pos, p.fallback, rank, print_expr(p.rank) if p.rank is not None else "",
            float(p.attribution.value) if p.attribution is not None else None,  # type: ignore[arg-type]
        )

    def _declare_template(self, parts: tuple[ast.TemplatePart, ...]) -> None:
        """Generate a function for every expression in a template (names kept by node)."""
        for part in parts:
            if isinstance(part, ast.TemplateToken):
                self._template_fns[id(part.expr)] = self.function(part.expr)
            elif isinstance(part, ast.TemplateIf):
                self._template_fns[id(part.condition)] = self.function(part.condition)
                self._declare_template(part.then)
                self._declare_template(part.otherwise)
            elif isinstance(part, ast.TemplateFor):
                self._template_fns[id(part.items)] = self.function(part.items)
                self._declare_template(part.body)

    def _template(self, parts: tuple[ast.TemplatePart, ...], namespace: dict[str, Any],
                  html: bool = False) -> Template:
        out: list[Any] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, ast.TemplateToken):
                out.append(TemplateToken(
                    namespace[self._template_fns[id(part.expr)]],
                    self.checked.type_of(part.expr).name,
                    tuple((f, tuple(lit.value for lit in args)) for f, args in part.filters)))
            elif isinstance(part, ast.TemplateIf):
                out.append(TemplateIf(namespace[self._template_fns[id(part.condition)]],
                                      self._template(part.then, namespace, html),
                                      self._template(part.otherwise, namespace, html)))
            else:
                out.append(TemplateFor(part.var, namespace[self._template_fns[id(part.items)]],
                                       self._template(part.body, namespace, html)))
        return Template(tuple(out), html)

    def _exec(self) -> dict[str, Any]:
        source = "\n".join(self.defs)
        namespace: dict[str, Any] = {"__builtins__": {}, **HELPERS, **self.constants}
        exec(compile(source, "<arbiter-rules>", "exec"), namespace)
        return namespace


def _policy_limits(checked: CheckedRuleset, scope: str,
                   sources: dict[str, str]) -> dict[str, Limit]:
    return {r.name: Limit(r.limit, float(r.window.value),  # type: ignore[arg-type]
                          f"at most {r.limit} per {print_expr(r.window)}", r.pos)
            for r in checked.policies if r.scope == scope}



def compile_ruleset(
    checked: CheckedRuleset, sources: dict[str, str], revision: str, warnings: tuple[str, ...],
    cost: int = 0,
) -> Ruleset:
    """Generate and compile the evaluation functions of a checked ruleset."""
    return Compiler(checked, sources).build(revision, warnings, cost)


def _prior(spec: tuple[str, tuple[float, ...]]) -> Prior:
    kind, params = spec
    if kind == "beta":
        return BetaPrior(*params)
    mu, kappa, alpha, beta = params
    return NormalGammaPrior(mu, kappa, alpha, beta)


def _segments_in(expr: ast.Expr | None, checked: CheckedRuleset) -> tuple[str, ...]:
    """The segments an expression reads, in order of first use."""
    if expr is None:
        return ()
    names = [n.parts[0] for n in walk(expr)
             if isinstance(n, ast.Ref) and len(n.parts) == 1 and n.parts[0] in checked.segments]
    return tuple(dict.fromkeys(names))


def _cap(cap: ast.FrequencyCap | None) -> FrequencyCap | None:
    if cap is None:
        return None
    window = cap.window_text or f"{cap.window_seconds:g}s"
    return FrequencyCap(cap.limit, cap.window_seconds, f"cap: {cap.limit} per {window}", cap.pos)


def _cooldown(a: ast.ActionDef) -> Limit | None:
    if a.cooldown is None:
        return None
    return Limit(1, float(a.cooldown.value), print_expr(a.cooldown),  # type: ignore[arg-type]
                 a.field_pos["cooldown"])


def _suppression(rule: ast.Suppression | None) -> Suppression | None:
    if rule is None:
        return None
    return Suppression(float(rule.window.value), rule.count, rule.outcome,  # type: ignore[arg-type]
                       f"suppress: {print_expr(rule.window)} after {rule.count} {rule.outcome}",
                       rule.pos)


def _experiment(e: ast.ExperimentDef) -> Experiment:
    prior = _prior(e.prior)
    if e.reward_value and "allocate" not in e.field_pos:  # no prior written: on any scale
        prior = NormalGammaPrior(0.0, 1.0, 1.0, 1.0, pooled=True)
    return Experiment(
        e.name, e.placement, e.arms, prior, e.reward, e.pos, e.weights,
        e.holdout, e.salt or e.name, e.layer, reward_value=e.reward_value,
        window=float(e.window.value) if e.window else None,  # type: ignore[arg-type]
        half_life=float(e.half_life.value) if e.half_life else None,  # type: ignore[arg-type]
        winner=e.winner, traffic=e.traffic)


def _score(score: ast.ScoreDef, fns: tuple[CompiledFn, ...]) -> ScoreSpec:
    outcome = score.outcome
    assert outcome is not None
    window = outcome.window
    text = {"none": f"no {outcome.event}", "any": outcome.event}.get(
        outcome.kind, f"sum({outcome.event}.value)") + f" within {window.text or window.value}"
    return ScoreSpec(score.name, tuple(f.name for f in score.features), fns, outcome.kind,
                     outcome.event, float(window.value), text, score.pos)  # type: ignore[arg-type]


def _recommend(reco: ast.Recommend | None, where: CompiledFn | None) -> RecommendSpec | None:
    if reco is None:
        return None
    return RecommendSpec(
        reco.count, where, print_expr(reco.where) if reco.where is not None else "",
        tuple((rule.event, float(rule.window.value) if rule.window is not None else None)  # type: ignore[arg-type]
              for rule in reco.exclude), reco.pos,
        where_reads_only_items=reco.where is not None and _reads_only_items(reco.where))


def _reads_only_items(expr: ast.Expr) -> bool:
    """Whether an expression reads nothing but ``item.*`` (no profile, context, segment,
    function or ``now``): its value is the same for every customer at any time."""
    return all(isinstance(node, ast.Literal | ast.ListExpr | ast.Unary | ast.Binary | ast.BoolOp)
               or (isinstance(node, ast.Ref) and node.parts[0] == "item")
               or (isinstance(node, ast.Index) and node.target.parts[0] == "item")
               for node in ast.walk(expr))


def _model(m: ast.ModelDef) -> ModelSpec:
    features = tuple(name for name, _ in m.features) if m.features is not None else None
    return ModelSpec(m.per, features, m.learner, m.bagging, m.hashed,
                     m.vocabulary or MODEL_VOCABULARY)
