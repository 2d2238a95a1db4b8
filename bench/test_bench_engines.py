"""One condition, five evaluators: hand-written Python, Arbiter, rule-engine, CEL, ZEN.

    make bench-engines

The condition is the high-value-loyal segment over a flat record (the other
engines have no event functions, so the windowed numbers are precomputed):

    days_since_purchase <= 30 and total_spend > 500 and visits_7d > 5
    and (tier == "gold" or device in ["ios", "android"])

Every evaluator is compiled once outside the timed loop and must return True on
the same record. Arbiter is measured twice: with schema defaults (the checker
proves no value is null, so plain Python operators are emitted) and without
(three-valued null logic through helper calls).
"""

from __future__ import annotations

from typing import Any

import pytest

from dsl.loader import load_text

RECORD: dict[str, Any] = {"days_since_purchase": 3.0, "total_spend": 700.0, "visits_7d": 8.0,
                          "tier": "silver", "device": "ios"}
CONDITION = ('days_since_purchase <= 30 and total_spend > 500 and visits_7d > 5 '
             'and (tier == "gold" or device in ["ios", "android"])')


def handwritten(r: dict[str, Any]) -> bool:
    return (r["days_since_purchase"] <= 30 and r["total_spend"] > 500 and r["visits_7d"] > 5
            and (r["tier"] == "gold" or r["device"] in ("ios", "android")))


def handwritten_null_safe(r: dict[str, Any]) -> bool:
    """What a careful programmer writes when any value may be missing (None)."""
    days, spend, visits = r.get("days_since_purchase"), r.get("total_spend"), r.get("visits_7d")
    tier, device = r.get("tier"), r.get("device")
    return (days is not None and days <= 30 and spend is not None and spend > 500
            and visits is not None and visits > 5
            and (tier == "gold" or (device is not None and device in ("ios", "android"))))


def arbiter_segment(defaults: bool) -> Any:
    d = " = 0" if defaults else ""
    s = ' = ""' if defaults else ""
    rules = f"""
profile {{ days_since_purchase: number{d} total_spend: number{d} visits_7d: number{d}
          tier: string{s} device: string{s} }}
segment s = profile.days_since_purchase <= 30 and profile.total_spend > 500
  and profile.visits_7d > 5 and (profile.tier == "gold" or profile.device in ["ios", "android"])
placement p {{ channels: web }}
action a {{ placements: p value: 1 when: s }}
"""
    return load_text(rules).segments[0].fn


def test_handwritten(benchmark: Any) -> None:
    benchmark.group = "condition"
    assert benchmark(handwritten, RECORD) is True


def test_handwritten_null_safe(benchmark: Any) -> None:
    benchmark.group = "condition"
    assert benchmark(handwritten_null_safe, RECORD) is True


@pytest.mark.parametrize("defaults", [True, False], ids=["non-null", "nullable"])
def test_arbiter(benchmark: Any, defaults: bool) -> None:
    benchmark.group = "condition"
    fn = arbiter_segment(defaults)
    assert benchmark(fn, RECORD, {}, {}, {}, 0.0) is True


def test_rule_engine(benchmark: Any) -> None:
    rule_engine = pytest.importorskip("rule_engine")
    benchmark.group = "condition"
    rule = rule_engine.Rule(CONDITION.replace('"', "'"))
    assert benchmark(rule.matches, RECORD) is True


def test_cel_python(benchmark: Any) -> None:
    celpy = pytest.importorskip("celpy")
    benchmark.group = "condition"
    env = celpy.Environment()
    program = env.program(env.compile(CONDITION.replace(" and ", " && ").replace(" or ", " || ")))
    activation = celpy.json_to_cel(RECORD)
    assert bool(benchmark(program.evaluate, activation)) is True


def test_zen_engine(benchmark: Any) -> None:
    zen = pytest.importorskip("zen")
    benchmark.group = "condition"
    expression = zen.compile_expression(CONDITION.replace('"', "'"))
    assert benchmark(expression.evaluate, RECORD) is True
