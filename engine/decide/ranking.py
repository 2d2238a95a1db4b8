"""The final cut: rank the candidates, fall back when there are none, render content."""

from __future__ import annotations

import logging

from dsl.ruleset import Ruleset
from dsl.vocabulary import ReasonKind
from engine.decide.decision import RankedAction, Reason
from engine.decide.eligibility import recommended_items
from engine.decide.facts import Facts
from engine.decide.tracer import Tracer

log = logging.getLogger(__name__)


def rank(candidates: list[RankedAction], limit: int, tracer: Tracer) -> list[RankedAction]:
    """Highest score first; ties by priority (high first), then action id."""
    ordered = sorted(candidates, key=lambda a: (-a.score, -a.priority, a.action_id))
    shown = ordered[:limit]
    for i, action in enumerate(shown, start=1):
        action.rank = i
    if tracer.enabled:
        for cut in ordered[limit:]:
            tracer.check(cut.action_id, Reason(ReasonKind.SCORE, "rank", False,
                                               f"score {cut.score:.4f} below the {limit} shown"))
        tracer.ranked(shown, candidates, limit)
    return shown


def fallback_action(ruleset: Ruleset, action_id: str, facts: Facts,
                    tracer: Tracer) -> RankedAction:
    """The placement's fallback, shown when nothing is eligible: score 0, rank 1."""
    action = ruleset.actions[action_id]
    try:
        value = float(action.value(*facts.args()) or 0.0)
    except Exception:
        log.exception("value of fallback %s failed", action.id)
        value = 0.0
    if tracer.enabled:
        tracer.fallback(action.id, Reason(ReasonKind.FALLBACK, action.id, True,
                                          "no action was eligible: the placement's fallback",
                                          str(action.pos)))
    items = tuple(recommended_items(action, facts, tracer)) if action.recommend else ()
    return RankedAction(action.id, 0.0, 0.0, value, action.weight, action.priority, rank=1,
                        tags=action.tags, items=items)


def render_content(ruleset: Ruleset, ranked: RankedAction, facts: Facts) -> None:
    """Fill the action's content templates for this customer (a failing one renders empty)."""
    action = ruleset.actions[ranked.action_id]
    fields = action.fields(ranked.value, ranked.propensity)
    if action.recommend is not None:
        fields["recommended"] = [item.fields() for item in ranked.items]
    args = (*facts.args(), fields)
    for name, template in action.content:
        try:
            ranked.content[name] = template.render(args)
        except Exception:
            log.exception("content %s.%s failed", action.id, name)
            ranked.content[name] = ""
