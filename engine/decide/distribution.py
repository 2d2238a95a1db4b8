"""The policy's first-slot distribution: exact, for off-policy evaluation."""

from __future__ import annotations

import numpy as np

from engine.decide.allocation import Allocation
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
    (columns), over the allocation's outcomes (a member x outcome matrix at once)."""
    winners, weights, arms = allocation.winners, allocation.weights, allocation.arms
    members, kept_arm = len(scenarios), winners >= 0
    if arms:
        own = np.array([[_score_of(a, scores) for a in arms] for scores in scenarios])
        arm_scores = np.where(np.isnan(allocation.scores)[None, :],
                              own[:, np.maximum(winners, 0)], allocation.scores[None, :])
    else:
        arm_scores = np.full((members, len(winners)), -np.inf)
    thresholds = np.array([_score_of(b, s) if b is not None else -np.inf
                           for b, s in zip(bests, scenarios, strict=True)])
    ties_won = np.array([[b is None or (-a.priority, a.action_id) < (-b.priority, b.action_id)
                          for a in arms] or [False] for b in bests])
    t = thresholds[:, None]
    arm_wins = kept_arm[None, :] & ((arm_scores > t) | (
        (arm_scores == t) & ties_won[:, np.maximum(winners, 0)]))
    best_p = np.where(~arm_wins, weights[None, :], 0.0).sum(axis=1)
    if not arms:
        return best_p, np.zeros((members, 0))
    chosen = np.where(arm_wins, weights[None, :], 0.0)
    arm_p = np.stack([chosen[:, winners == j].sum(axis=1) for j in range(len(arms))], axis=1)
    return best_p, arm_p
