"""Scoring: each eligible action's propensity and its score by the placement's formula."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from dsl.ruleset import Action, ModelSpec, Placement, Ruleset
from engine.decide.decision import RankedAction
from engine.decide.eligibility import check_eligibility
from engine.decide.facts import Facts
from engine.decide.inputs import DecideInput
from engine.decide.tracer import Tracer
from engine.learning.models import PropensityModels
from engine.records import Profile

log = logging.getLogger(__name__)

Scorer = Callable[[RankedAction, float], float]
"""(candidate, propensity) -> its score."""


def scorer_for(ruleset: Ruleset, placement: Placement, facts: Facts) -> Scorer:
    """The placement's arbitration formula: a candidate's score at a given propensity.

    Without a ``rank:`` formula it is ``propensity * value * weight``. A formula that
    is null or fails scores 0 (logged), so it can never raise a decision.
    """
    formula = placement.rank
    if formula is None:
        return lambda c, propensity: propensity * c.value * c.weight
    args = facts.args()

    def score(candidate: RankedAction, propensity: float) -> float:
        action = ruleset.actions[candidate.action_id]
        try:
            result = formula(*args, action.fields(candidate.value, propensity))
        except Exception:
            log.exception("rank formula of %s failed for %s", placement.name, action.id)
            return 0.0
        return float(result) if result is not None else 0.0

    return score


def score_candidate(action: Action, value: float, propensity: float, scorer: Scorer,
                    tracer: Tracer) -> RankedAction:
    """The eligible action as a candidate, scored."""
    ranked = RankedAction(action.id, 0.0, propensity, value, action.weight, action.priority,
                          tags=action.tags)
    ranked.score = scorer(ranked, propensity)
    if tracer.enabled:
        tracer.score_terms(action.id, {"propensity": propensity, "value": value,
                                       "weight": action.weight})
    return ranked


class Candidates(NamedTuple):
    """The placement's eligible actions, scored; with a bagged model, every member's scores."""

    actions: list[RankedAction]
    member_scores: list[dict[str, float]] | None  # one score map per bag member


def score_candidates(ruleset: Ruleset, req: DecideInput, facts: Facts, profile: Profile | None,
                     models: PropensityModels, spec: ModelSpec, features: dict[str, float],
                     member: int, scorer: Scorer, tracer: Tracer) -> Candidates:
    """Eligibility, propensity and score of every action of the placement.

    With ``bagging`` every member predicts each candidate (for the exact first-slot
    distribution); member ``member`` is the one that ranks.
    """
    placement = req.placement.name
    bag: dict[str, list[float]] = {}
    candidates: list[RankedAction] = []
    for action in req.placement.actions:
        value = check_eligibility(ruleset, action, req, facts, profile, tracer)
        if tracer.enabled:
            tracer.eligibility(action.id, value is not None)
        if value is None:
            continue
        if spec.bagging:
            bag[action.id] = models.predict_bag(action.id, spec, action.prior, features,
                                                placement)
            propensity = bag[action.id][member]
        else:
            propensity = models.predict(action.id, spec, action.prior, features, placement)
        candidate = score_candidate(action, value, propensity, scorer, tracer)
        if action.recommend is not None:
            candidate.items = tuple(facts.recommended.get(action.id, ()))
        candidates.append(candidate)
    member_scores = ([{c.action_id: scorer(c, bag[c.action_id][k]) for c in candidates}
                      for k in range(spec.bagging)] if spec.bagging else None)
    return Candidates(candidates, member_scores)
