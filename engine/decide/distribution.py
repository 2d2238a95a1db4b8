"""The policy's first-slot distribution: exact, for off-policy evaluation."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

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
    is fixed, so the distribution is an exact average over those outcomes; each
    member's share of the experiment's outcomes is two binary searches per arm
    (:func:`_first_slots`).
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
    for best, p in zip(bests, best_p.tolist(), strict=True):
        if best is not None and p > 0:
            dist[best.action_id] = dist.get(best.action_id, 0.0) + share * p
    for j, arm in enumerate(allocation.arms):
        p = float(arm_p[:, j].sum()) * share
        if p > 0:
            dist[arm.action_id] = dist.get(arm.action_id, 0.0) + p
    return dist


def _score_of(c: RankedAction, scores: Scores) -> float:
    return scores.get(c.action_id, c.score) if scores is not None else c.score


def _best(others: list[RankedAction], scores: Scores) -> RankedAction | None:
    """The plain action first in line under one bag member's scores."""
    if len(others) == 1:
        return others[0]
    return min(others, key=lambda o: (-_score_of(o, scores), -o.priority, o.action_id),
               default=None)


def _first_slots(allocation: Allocation, scenarios: list[Scores],
                 bests: list[RankedAction | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per bag member (rows): P(its best plain action is first), and P(arm j is first)
    (columns), over the allocation's outcomes.

    An arm is first when its score beats the member's best plain action (or ties it and
    wins on priority, then id). Outcomes with a fixed score (Thompson: the row's
    winning score) are sorted once per arm (:class:`~engine.decide.allocation.Ladder`),
    so each member's share is two binary searches in their cumulative weights, not a
    member x outcome comparison; outcomes scored by the arm's own model (NaN: a fixed
    split) depend on the member only. A few members and arms: plain Python (``bisect``
    on lists) costs less than NumPy's per-call overhead on arrays this small.
    """
    arms = allocation.arms
    arm_p = [[0.0] * len(arms) for _ in scenarios]
    if arms:
        thresholds = [_score_of(b, s) if b is not None else -math.inf
                      for b, s in zip(bests, scenarios, strict=True)]
        arm_ladders = allocation.ladders or ladders(allocation.winners, allocation.scores,
                                                    allocation.weights, len(arms))
        for j, arm in enumerate(arms):
            arm_key = (-arm.priority, arm.action_id)
            sorted_scores, above, own = arm_ladders[j]
            for m, (t, best, scores) in enumerate(zip(thresholds, bests, scenarios,
                                                      strict=True)):
                tie_won = best is None or arm_key < (-best.priority, best.action_id)
                p = 0.0
                if sorted_scores:
                    if t != t:  # NaN sorts last, as NumPy's searchsorted has it
                        p += above[-1]
                    else:
                        p += above[bisect_left(sorted_scores, t) if tie_won
                                   else bisect_right(sorted_scores, t)]
                if own:
                    mine = _score_of(arm, scores)
                    p += own if mine > t or (mine == t and tie_won) else 0.0
                arm_p[m][j] = p
    shares = np.array(arm_p).reshape(len(scenarios), len(arms))
    return allocation.weights.sum() - shares.sum(axis=1), shares
