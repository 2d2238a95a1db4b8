"""The policy's first-slot distribution: exact, for off-policy evaluation."""

from __future__ import annotations

import numpy as np

from engine.decide.allocation import Allocation, ladders
from engine.decide.decision import RankedAction

Scores = dict[str, float] | None
"""One bag member's score of each action (None: the actions' own scores)."""


def top_distribution(kept: list[RankedAction], allocation: Allocation | None,
                     member_scores: list[dict[str, float]] | None) -> dict[str, float]:
    """P(each action is in the first slot | this request), over the policy's random choices.

    Two things are random: which arm an experiment keeps, at what score
    (``allocation``), and which bag member scored the plain actions
    (``member_scores``, one score map per member, equally likely). Everything else
    is fixed, so the distribution is an exact average over those outcomes; the
    experiment's outcomes for every member are scored at once with NumPy.
    """
    others = [c for c in kept if c.arm is None]
    scenarios: list[Scores] = list(member_scores) if member_scores is not None else [None]
    share = 1.0 / len(scenarios)
    bests = [_best(others, scores) for scores in scenarios]
    dist: dict[str, float] = {}
    if allocation is None:
        for best in bests:
            if best is not None:
                dist[best.action_id] = dist.get(best.action_id, 0.0) + share
        return dist
    best_p, arm_p = _first_slots(allocation, scenarios, bests)
    for best, p in zip(bests, best_p, strict=True):
        if best is not None and p > 0:
            dist[best.action_id] = dist.get(best.action_id, 0.0) + share * float(p)
    for j, arm in enumerate(allocation.arms):
        p = float(arm_p[:, j].sum()) * share
        if p > 0:
            dist[arm.action_id] = dist.get(arm.action_id, 0.0) + p
    return dist


def _score_of(c: RankedAction, scores: Scores) -> float:
    return scores.get(c.action_id, c.score) if scores is not None else c.score


def _best(others: list[RankedAction], scores: Scores) -> RankedAction | None:
    """The plain action first in line under one bag member's scores."""
    return min(others, key=lambda o: (-_score_of(o, scores), -o.priority, o.action_id),
               default=None)


def _first_slots(allocation: Allocation, scenarios: list[Scores],
                 bests: list[RankedAction | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per bag member (rows): P(its best plain action is first), and P(arm j is first)
    (columns), over the allocation's outcomes.

    An arm is first when its score beats the member's best plain action (or ties it and
    wins on priority, then id). Outcomes with a fixed score (Thompson: the row's
    winning score) are sorted once per arm, so each member's share is two binary
    searches in their cumulative weights, not a member x outcome comparison; outcomes
    scored by the arm's own model (NaN: a fixed split) depend on the member only.
    """
    winners, weights, arms = allocation.winners, allocation.weights, allocation.arms
    members = len(scenarios)
    arm_p = np.zeros((members, len(arms)))
    if arms:
        thresholds = np.array([_score_of(b, s) if b is not None else -np.inf
                               for b, s in zip(bests, scenarios, strict=True)])
        fixed = ~np.isnan(allocation.scores)
        arm_ladders = allocation.ladders or ladders(winners, allocation.scores, weights,
                                                    len(arms))
        for j, arm in enumerate(arms):
            ties_won = np.array([b is None or (-arm.priority, arm.action_id)
                                 < (-b.priority, b.action_id) for b in bests])
            sorted_scores, above = arm_ladders[j]
            if len(sorted_scores):
                beat = above[np.searchsorted(sorted_scores, thresholds, side="right")]
                reach = above[np.searchsorted(sorted_scores, thresholds, side="left")]
                arm_p[:, j] += np.where(ties_won, reach, beat)
            own_scored = (winners == j) & ~fixed
            if own_scored.any():
                own = np.array([_score_of(arm, s) for s in scenarios])
                wins = (own > thresholds) | ((own == thresholds) & ties_won)
                arm_p[:, j] += np.where(wins, weights[own_scored].sum(), 0.0)
    best_p = weights.sum() - arm_p.sum(axis=1)
    return best_p, arm_p
