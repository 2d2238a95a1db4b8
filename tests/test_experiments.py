"""Experiment allocation: bucketing vectors, fixed splits, holdouts, layers."""

from __future__ import annotations

from collections import Counter

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from dsl.ruleset import Ruleset
from engine.bucketing import bucket, fixed_arm, in_holdout, takes_part
from engine.service import Arbiter

RULES = """
placement home { channels: web  fallback: plain }
placement mail { channels: email }
action plain { placements: home value: 1 when: 1 > 2 }
action a { placements: home, mail value: 10 }
action b { placements: home, mail value: 10 }
action c { placements: home, mail value: 10 }
experiment split on home {
  arms: a, b, c
  allocate: weights(50, 30, 20)
  holdout: 10%
  salt: "split-2026"
  layer: hero
}
experiment other on mail {
  arms: a, b
  layer: hero
}
"""


@pytest.fixture(scope="module")
def rs() -> Ruleset:
    return load_text(RULES)


def test_bucket_test_vectors() -> None:
    # published in engine/bucketing.py: any implementation must reproduce these
    assert bucket("hero_test", "ann") == 0.6372275554944727
    assert bucket("hero_test", "bob") == 0.27373710392329237
    assert 0.0 <= bucket("", "") < 1.0


def test_fixed_split_is_sticky_and_proportional(rs: Ruleset) -> None:
    exp = rs.experiments["split"]
    users = [f"u{i}" for i in range(20_000)]
    first = {u: fixed_arm(exp, u) for u in users}
    assert all(fixed_arm(exp, u) == first[u] for u in users[:500])
    shares = Counter(first.values())
    for arm, weight in zip(exp.arms, exp.weights, strict=True):
        assert abs(shares[arm] / len(users) - weight / 100) < 0.015, shares


def test_holdout_grows_without_anyone_leaving(rs: Ruleset) -> None:
    exp = rs.experiments["split"]
    users = [f"u{i}" for i in range(20_000)]
    held = {u for u in users if in_holdout(exp, u)}
    assert abs(len(held) / len(users) - 0.10) < 0.01
    from dataclasses import replace

    bigger = replace(exp, holdout=20.0)
    held_more = {u for u in users if in_holdout(bigger, u)}
    assert held <= held_more and abs(len(held_more) / len(users) - 0.20) < 0.01
    # and the arm assignments did not move
    assert all(fixed_arm(exp, u) == fixed_arm(bigger, u) for u in users[:2000])


def test_layers_are_mutually_exclusive(rs: Ruleset) -> None:
    split, other = rs.experiments["split"], rs.experiments["other"]
    users = [f"u{i}" for i in range(10_000)]
    in_split = [takes_part(rs, split, u) for u in users]
    in_other = [takes_part(rs, other, u) for u in users]
    assert all(a != b for a, b in zip(in_split, in_other, strict=True))
    assert abs(sum(in_split) / len(users) - 0.5) < 0.02


def test_decisions_follow_the_assignment(rs: Ruleset) -> None:
    arb = Arbiter(rs, MemoryStore(), seed=1)
    exp = rs.experiments["split"]
    seen = Counter()
    for i in range(400):
        user = f"u{i}"
        d = arb.decide(user_id=user, placement="home", explain=True)
        if not takes_part(rs, exp, user):
            assert d.holdout is None
            assert all(a.experiment is None for a in d.actions)  # plain actions
        elif in_holdout(exp, user):
            assert d.holdout == "split"
            assert [a.action_id for a in d.actions] == ["plain"]  # the fallback
        else:
            assert [(a.action_id, a.experiment) for a in d.actions] == [
                (fixed_arm(exp, user), "split")]
            seen[d.actions[0].action_id] += 1
            again = arb.decide(user_id=user, placement="home")
            assert again.actions[0].action_id == d.actions[0].action_id  # sticky
    assert set(seen) == {"a", "b", "c"}


def test_holdout_decisions_are_recorded_for_lift(rs: Ruleset) -> None:
    arb = Arbiter(rs, MemoryStore(), seed=1)
    exp = rs.experiments["split"]
    user = next(f"u{i}" for i in range(10_000)
                if takes_part(rs, exp, f"u{i}") and in_holdout(exp, f"u{i}"))
    d = arb.decide(user_id=user, placement="home")
    record = arb.store.get_decision(d.decision_id)
    assert record is not None and record.holdout == "split"


def test_an_ineligible_assigned_arm_shows_no_other_arm() -> None:
    rs = load_text("""
profile { vip: bool = false }
placement home { channels: web }
action a { placements: home value: 10 when: profile.vip }
action b { placements: home value: 10 }
experiment split on home { arms: a, b  allocate: weights(100, 0) }
""")
    arb = Arbiter(rs, MemoryStore(), seed=1)
    d = arb.decide(user_id="u1", placement="home", explain=True)
    assert d.actions == ()  # assigned a, not eligible; b must not stand in
    trace = next(t for t in d.traces if t.action_id == "b")
    assert any("fixed split assigns arm a" in r.detail for r in trace.reasons)
