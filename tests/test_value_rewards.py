"""Revenue experiments find the better arm on any scale (the pooled default prior)."""

from __future__ import annotations

import random

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.service import Arbiter

RULES = """
placement home { channels: web }
action b1 { placements: home  value: 1 }
action b2 { placements: home  value: 1 }
experiment rev on home { arms: b1, b2  reward: conversion.value }
"""
# b2 earns twice as much per impression (6 against 3): 30% buy, for 10 (b1) or 20 (b2)
PRICE = {"b1": 10.0, "b2": 20.0}
BUY = 0.3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_arm_earning_twice_as_much_wins(seed: int) -> None:
    arb = Arbiter(load_text(RULES), MemoryStore(), seed=seed)
    rng = random.Random(seed)
    shown = {"b1": 0, "b2": 0}
    for i in range(1500):
        d = arb.decide(user_id=f"u{i}", placement="home")
        arm = d.actions[0].action_id
        shown[arm] += 1
        arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="impression")
        if rng.random() < BUY:
            arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="conversion",
                         value=PRICE[arm])
    assert shown["b2"] > 1000, shown
    report = arb.experiment_report("rev")
    assert report.best_arm == "b2"
    b2 = next(a for a in report.arms if a.arm == "b2")
    assert b2.prob_best > 0.9 and b2.ci[0] < 6.0 < b2.ci[1]


def test_the_holdout_starts_from_the_arms_pooled_prior() -> None:
    from engine.experiments.report import experiment_report
    from engine.records import ArmCounts

    rules = load_text(RULES.replace("reward: conversion.value", "reward: conversion.value\n"
                                    "  holdout: 10%"))
    counts = {"b1": ArmCounts(10, 30, 900), "b2": ArmCounts(10, 90, 8100),
              "holdout": ArmCounts(4, 100, 10000)}
    report = experiment_report(rules.experiments["rev"], counts, 0.0)
    assert report.holdout is not None
    # pooled from b1 and b2 only (mean 6 per impression), not from the holdout's own data
    empty = experiment_report(rules.experiments["rev"],
                              {**counts, "holdout": ArmCounts()}, 0.0).holdout
    assert empty is not None and empty.mean == pytest.approx(6.0)


ARBITRATED = """
placement home { channels: web  slots: 1 }
action fx_a { placements: home  value: 15 }
action fx_b { placements: home  value: 15 }
action loan { placements: home  value: 10  prior: 0.5 }
experiment rev on home { arms: fx_a, fx_b  reward: conversion.value }
"""


def test_a_revenue_arm_competes_on_its_revenue_not_on_revenue_times_its_value() -> None:
    """With `reward: conversion.value` the draw is revenue per impression, which is what
    `propensity * value` stands for. It was used as the propensity and multiplied by
    the arm's value again: arms earning about 2 per impression, worth 15, scored ~30
    and always beat an action scored 0.5 * 10 = 5 (a bank's FX-card test ranked above
    everything on its placement, with a "propensity" of 7)."""
    arb = Arbiter(load_text(ARBITRATED), MemoryStore(), seed=3)
    rng = random.Random(3)
    shown = {"fx_a": 0, "fx_b": 0, "loan": 0}
    for i in range(600):  # what the arms have earned: 10% buy for 20, 2 per impression
        d = arb.decide(user_id=f"u{i}", placement="home", limit=3)
        for a in d.actions:
            if a.arm is None:
                continue
            arb.feedback(decision_id=d.decision_id, action_id=a.action_id,
                         outcome="impression")
            if rng.random() < 0.1:
                arb.feedback(decision_id=d.decision_id, action_id=a.action_id,
                             outcome="conversion", value=20.0)
    arb.learn()
    for i in range(300):
        d = arb.decide(user_id=f"v{i}", placement="home")
        top = d.actions[0]
        shown[top.action_id] += 1
        if top.arm is not None:
            assert 0.0 <= top.propensity < 1.0  # revenue over the arm's value
            assert top.score == pytest.approx(top.propensity * top.value * top.weight)
    assert shown["loan"] > 250, shown  # 5 against ~2: the loan almost always
