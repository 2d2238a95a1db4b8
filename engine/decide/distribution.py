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
    experiment's outcomes are scored at once with NumPy.
    """
    others = [c for c in kept if c.arm is None]
    scenarios: list[Scores] = list(member_scores) if member_scores is not None else [None]
    share = 1.0 / len(scenarios)
    dist: dict[str, float] = {}
    for scores in scenarios:
        for action_id, p in _first_slot(others, allocation, scores):
            if p > 0:
                dist[action_id] = dist.get(action_id, 0.0) + share * p
    return dist


def _score_of(c: RankedAction, scores: Scores) -> float:
    return scores.get(c.action_id, c.score) if scores is not None else c.score


def _first_slot(others: list[RankedAction], allocation: Allocation | None, scores: Scores
                ) -> list[tuple[str, float]]:
    """(action, probability) of the first slot for one bag member's scores."""
    best = min(others, key=lambda o: (-_score_of(o, scores), -o.priority, o.action_id),
               default=None)
    if allocation is None:
        return [(best.action_id, 1.0)] if best is not None else []
    winners, weights = allocation.winners, allocation.weights
    kept_arm = winners >= 0
    if allocation.arms:
        own = np.array([_score_of(a, scores) for a in allocation.arms])
        arm_scores = np.where(np.isnan(allocation.scores), own[winners], allocation.scores)
    else:
        arm_scores = np.full(len(winners), -np.inf)
    out = []
    if best is None:
        arm_wins = kept_arm
    else:
        threshold = _score_of(best, scores)
        ties_won = np.array([(-a.priority, a.action_id) < (-best.priority, best.action_id)
                             for a in allocation.arms] or [False])
        arm_wins = kept_arm & ((arm_scores > threshold) | (
            (arm_scores == threshold) & ties_won[np.maximum(winners, 0)]))
        out.append((best.action_id, float(weights[~arm_wins].sum())))
    for j, arm in enumerate(allocation.arms):
        out.append((arm.action_id, float(weights[arm_wins & (winners == j)].sum())))
    return out
