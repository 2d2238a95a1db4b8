"""The policy's first-slot distribution: exact, for off-policy evaluation."""

from __future__ import annotations

import numpy as np

from engine.decide.allocation import Allocation
from engine.decide.decision import RankedAction


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
    scenarios: list[dict[str, float] | None] = (
        list(member_scores) if member_scores is not None else [None])
    share = 1.0 / len(scenarios)
    dist: dict[str, float] = {}

    def add(action_id: str, p: float) -> None:
        if p > 0:
            dist[action_id] = dist.get(action_id, 0.0) + p

    for scores in scenarios:
        def score_of(c: RankedAction, scores: dict[str, float] | None = scores) -> float:
            return scores.get(c.action_id, c.score) if scores is not None else c.score

        best = min(others, key=lambda o: (-score_of(o), -o.priority, o.action_id),
                   default=None)
        if allocation is None:
            if best is not None:
                add(best.action_id, share)
            continue
        winners, weights = allocation.winners, allocation.weights
        kept_arm = winners >= 0
        if allocation.arms:
            own = np.array([score_of(a) for a in allocation.arms])
            arm_scores = np.where(np.isnan(allocation.scores), own[winners], allocation.scores)
        else:
            arm_scores = np.full(len(winners), -np.inf)
        if best is None:
            arm_wins = kept_arm
        else:
            threshold = score_of(best)
            ties_won = np.array([(-a.priority, a.action_id) < (-best.priority, best.action_id)
                                 for a in allocation.arms] or [False])
            arm_wins = kept_arm & ((arm_scores > threshold) | (
                (arm_scores == threshold) & ties_won[np.maximum(winners, 0)]))
            add(best.action_id, share * float(weights[~arm_wins].sum()))
        for j, arm in enumerate(allocation.arms):
            add(arm.action_id, share * float(weights[arm_wins & (winners == j)].sum()))
    return dist
