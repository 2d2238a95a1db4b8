"""The first-slot distribution's binary searches against the member x outcome definition."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.decide.allocation import Allocation, ladders
from engine.decide.decision import RankedAction
from engine.decide.distribution import _first_slots, _score_of

SCORES = st.sampled_from([0.0, 0.1, 0.2, 0.5])  # few values: ties are common


def _action(name: str, score: float, priority: int) -> RankedAction:
    return RankedAction(name, score, 0.1, 1.0, 1.0, priority)


def _reference(allocation: Allocation, scenarios: list[dict[str, float] | None],
               bests: list[RankedAction | None]) -> tuple[np.ndarray, np.ndarray]:
    """Every member against every outcome, as the distribution is defined."""
    best_p = np.zeros(len(scenarios))
    arm_p = np.zeros((len(scenarios), len(allocation.arms)))
    for m, (scores, best) in enumerate(zip(scenarios, bests, strict=True)):
        t = _score_of(best, scores) if best is not None else -math.inf
        for w, s, weight in zip(allocation.winners, allocation.scores, allocation.weights,
                                strict=True):
            if w < 0:
                best_p[m] += weight
                continue
            arm = allocation.arms[w]
            score = _score_of(arm, scores) if math.isnan(s) else s
            tie_won = best is None or (-arm.priority, arm.action_id) < (-best.priority,
                                                                        best.action_id)
            if score > t or (score == t and tie_won):
                arm_p[m, w] += weight
            else:
                best_p[m] += weight
    return best_p, arm_p


@st.composite
def cases(draw: st.DrawFn) -> tuple[Allocation, list[dict[str, float] | None],
                                     list[RankedAction | None]]:
    arms = [_action(f"arm{i}", draw(SCORES), draw(st.integers(0, 2)))
            for i in range(draw(st.integers(0, 3)))]
    plain = [_action(f"p{i}", draw(SCORES), draw(st.integers(0, 2)))
             for i in range(draw(st.integers(1, 3)))]
    members = draw(st.integers(1, 4))
    scenarios: list[dict[str, float] | None] = (
        [None] if members == 1 and draw(st.booleans()) else
        [{a.action_id: draw(SCORES) for a in [*arms, *plain]} for _ in range(members)])
    bests = [draw(st.none() | st.sampled_from(plain)) for _ in scenarios]
    outcomes = draw(st.integers(1, 12))
    winners = np.array([draw(st.integers(-1, len(arms) - 1)) for _ in range(outcomes)])
    thompson = draw(st.booleans())  # ladders made with the rows, as Thompson does
    scores = np.array([draw(SCORES | st.just(math.nan)) for _ in range(outcomes)])
    raw = np.array([draw(st.integers(1, 5)) for _ in range(outcomes)], dtype=float)
    weights = raw / raw.sum()
    allocation = Allocation(arms, winners, scores, weights,
                            ladders(winners, scores, weights, len(arms)) if thompson else ())
    return allocation, scenarios, bests


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases())
def test_first_slots_match_the_member_by_outcome_definition(
        case: tuple[Allocation, list[dict[str, float] | None], list[RankedAction | None]]
) -> None:
    allocation, scenarios, bests = case
    best_p, arm_p = _first_slots(allocation, scenarios, bests)
    want_best, want_arms = _reference(allocation, scenarios, bests)
    assert np.allclose(best_p, want_best) and np.allclose(arm_p, want_arms)
    assert np.allclose(best_p + arm_p.sum(axis=1), 1.0)
