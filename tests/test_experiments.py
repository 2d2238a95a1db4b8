"""Experiment allocation: bucketing vectors, fixed splits, holdouts, layers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from dsl.ruleset import Ruleset
from engine.experiments.bucketing import bucket, fixed_arm, in_holdout, takes_part
from engine.experiments.posteriors import NormalGammaPosterior
from engine.records import ArmCounts
from engine.requests import InvalidArgument
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


# ---- Thompson sampling: probabilities, value rewards, windows, winners ------------------
THOMPSON = """
placement home { channels: web  fallback: plain }
action plain { placements: home value: 1 when: 1 > 2 }
action other { placements: home value: 3  prior: 0.5 }
action a { placements: home value: 10 }
action b { placements: home value: 10 }
action c { placements: home value: 10 }
experiment t on home {
  arms: a, b, c
  EXTRA
}
"""


def thompson(extra: str = "") -> Ruleset:
    return load_text(THOMPSON.replace("EXTRA", extra))


def test_logged_probability_is_the_share_of_posterior_rows() -> None:
    rs = load_text(THOMPSON.replace("value: 3  prior: 0.5", "value: 0.1  prior: 0.01")
                   .replace("EXTRA", ""))
    arb = Arbiter(rs, MemoryStore(), seed=3)
    for arm, clicks in (("a", 2), ("b", 8), ("c", 5)):
        for _ in range(40):
            d = arb.decide(user_id="u", placement="home")
            record = arb.store.get_decision(d.decision_id)
            assert record is not None
            # force the feedback onto the arm we want by rewriting the shown arm
            record.actions[0].action_id = record.actions[0].arm = arm
            arb.store.save_decision(record, 60)
            arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="impression")
            if clicks > 0:
                arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="click")
                clicks -= 1
    state = arb.experiments.get(arb.ruleset.experiments["t"])
    scores = state.draws * 10.0  # value 10, weight 1: an arm beats 'other' (0.1 * 0.01)
    shares = np.bincount(scores.argmax(axis=1), minlength=3) / len(scores)
    seen: Counter[str] = Counter()
    for _ in range(300):
        d = arb.decide(user_id="u", placement="home")
        top = d.actions[0]
        assert top.probability == pytest.approx(shares["abc".index(top.action_id)])
        seen[top.action_id] += 1
    # the empirical play rate follows the logged probability
    for arm, share in zip("abc", shares, strict=True):
        assert abs(seen[arm] / 300 - share) < 0.1, (seen, shares)


def test_an_arm_that_can_lose_to_a_plain_action_has_a_lower_probability() -> None:
    rs = load_text(THOMPSON.replace("value: 3  prior: 0.5", "value: 6  prior: 0.9")
                   .replace("EXTRA", ""))
    arb = Arbiter(rs, MemoryStore(), seed=5)
    tops = Counter()
    probability: dict[str, float] = {}
    for _ in range(400):
        top = arb.decide(user_id="u", placement="home").actions[0]
        tops[top.action_id] += 1
        probability[top.action_id] = top.probability
    # with Beta(1,1) arms worth 10 and 'other' scoring 5.4, an arm tops when its
    # sample exceeds 0.54: P(max of 3 uniforms < 0.54) = 0.157 for 'other'
    assert probability["other"] == pytest.approx(0.157, abs=0.06)
    assert abs(tops["other"] / 400 - probability["other"]) < 0.06
    assert sum(probability[a] for a in "abc") == pytest.approx(1 - probability["other"], abs=0.1)


def test_fixed_split_logs_the_arm_share() -> None:
    rs = load_text(THOMPSON.replace("EXTRA", "allocate: weights(50, 30, 20)")
                   .replace("value: 3  prior: 0.5", "value: 3  when: 1 > 2"))
    arb = Arbiter(rs, MemoryStore(), seed=1)
    for user in ("u1", "u2", "u3", "u4"):
        top = arb.decide(user_id=user, placement="home").actions[0]
        assert top.probability == {"a": 0.5, "b": 0.3, "c": 0.2}[top.action_id]


def test_value_reward_updates_a_normal_gamma_posterior() -> None:
    arb = Arbiter(thompson("reward: conversion.value"), MemoryStore(), seed=1)
    d = arb.decide(user_id="u", placement="home")
    arm = d.actions[0].action_id
    arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="impression")
    with pytest.raises(InvalidArgument, match="value: is required"):
        arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="conversion")
    arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="conversion", value=80.0)
    assert arb.store.arm_counts("t")[arm] == ArmCounts(1.0, 80.0, 6400.0)
    state = arb.experiments.get(arb.ruleset.experiments["t"])
    post = state.posteriors["abc".index(arm)]
    # the default prior is pooled from every arm's observations (here, this one sale)
    assert isinstance(post, NormalGammaPosterior) and post.mu == pytest.approx(80.0)
    others = [p for i, p in enumerate(state.posteriors) if i != "abc".index(arm)]
    assert all(p.mu == pytest.approx(80.0) and p.beta == pytest.approx(6400.0) for p in others)


def test_a_written_normal_gamma_prior_is_used_as_written() -> None:
    arb = Arbiter(thompson("reward: conversion.value\n"
                           "  allocate: thompson(prior = normal_gamma(0, 1, 1, 1))"),
                  MemoryStore(), seed=1)
    d = arb.decide(user_id="u", placement="home")
    arm = d.actions[0].action_id
    arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="conversion", value=80.0)
    post = arb.experiments.get(arb.ruleset.experiments["t"]).posteriors["abc".index(arm)]
    assert isinstance(post, NormalGammaPosterior) and post.mu == pytest.approx(40.0)


def test_windowed_experiment_counts_hour_buckets() -> None:
    arb = Arbiter(thompson("window: 14d"), MemoryStore(), seed=1, clock=lambda: 7200.0 * 10)
    d = arb.decide(user_id="u", placement="home")
    arm = d.actions[0].action_id
    arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="click")
    assert arb.store.arm_counts("t") == {arm: ArmCounts(1, 1), f"{arm}@20": ArmCounts(1, 1)}


def test_promoted_winner_is_shown_to_everyone_without_exploring() -> None:
    arb = Arbiter(thompson("winner: b"), MemoryStore(), seed=1)
    for user in ("u1", "u2", "u3"):
        d = arb.decide(user_id=user, placement="home", explain=True, limit=5)
        # b is a plain action now, ranked by its own score; a and c are retired
        assert [a.action_id for a in d.actions] == ["other", "b"]
        assert all(a.experiment is None and a.probability == 1.0 for a in d.actions[:1])
        retired = next(t for t in d.traces if t.action_id == "a")
        assert any("winner b promoted" in r.detail for r in retired.reasons)


@pytest.mark.parametrize("extra", ["traffic: 50%", "holdout: 30%",
                                   "layer: hero\n  salt: \"s\""])
def test_an_ended_experiment_retires_its_arms_for_every_customer(extra: str) -> None:
    """`winner:` said every customer gets the winner and the other arms are retired; the
    customers outside the experiment's traffic (or its layer) still saw every arm as an
    ordinary action, and those in its holdout got the fallback instead of the winner."""
    rules = THOMPSON.replace("EXTRA", f"{extra}\n  winner: b").replace("when: 1 > 2", "")
    if "layer" in extra:
        rules += ("placement mail { channels: email }\naction m { placements: mail value: 1 }\n"
                  "action n { placements: mail value: 1 }\n"
                  "experiment other_in_layer on mail { arms: m, n  layer: hero }\n")
    arb = Arbiter(load_text(rules), MemoryStore(), seed=1)
    shown = Counter(action.action_id for i in range(200)
                    for action in arb.decide(user_id=f"u{i}", placement="home",
                                             limit=5).actions)
    assert shown == {"other": 200, "b": 200, "plain": 200}, shown


def test_holdout_outcomes_are_counted_on_the_fallback() -> None:
    rs = load_text(THOMPSON.replace("EXTRA", "holdout: 50%").replace("when: 1 > 2", ""))
    arb = Arbiter(rs, MemoryStore(), seed=1)
    exp = rs.experiments["t"]
    user = next(f"u{i}" for i in range(100) if in_holdout(exp, f"u{i}"))
    d = arb.decide(user_id=user, placement="home")
    assert d.actions[0].action_id == "plain" and d.actions[0].arm == "holdout"
    arb.feedback(decision_id=d.decision_id, action_id="plain", outcome="click")
    assert arb.store.arm_counts("t") == {"holdout": ArmCounts(1, 1)}


def test_growing_traffic_only_adds_customers_and_keeps_their_arms() -> None:
    small = load_text(THOMPSON.replace("EXTRA", "allocate: weights(1, 1, 1)  traffic: 20%"))
    large = load_text(THOMPSON.replace("EXTRA", "allocate: weights(1, 1, 1)  traffic: 60%"))
    users = [f"u{i}" for i in range(5000)]
    inside = {u for u in users if takes_part(small, small.experiments["t"], u)}
    grown = {u for u in users if takes_part(large, large.experiments["t"], u)}
    assert inside < grown
    assert abs(len(inside) / 5000 - 0.2) < 0.02 and abs(len(grown) / 5000 - 0.6) < 0.02
    assert all(fixed_arm(small.experiments["t"], u) == fixed_arm(large.experiments["t"], u)
               for u in inside)
    arb = Arbiter(small, MemoryStore(), seed=1)
    outside = next(u for u in users if u not in inside)
    d = arb.decide(user_id=outside, placement="home", channel="web", limit=5)
    assert all(a.experiment is None for a in d.actions)  # arms as ordinary actions


def test_a_burst_of_own_feedback_rereads_an_experiment_once_per_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server (push mode) a campaign's impressions each moved the experiment's
    counters, and each made a store read and a rebuild of the draws: now one per
    interval, the burst's tail read by the next feedback after it or by the sync."""
    import time

    from engine.experiments import state
    from engine.experiments.sampling import ThompsonSampler

    monkeypatch.setattr(state, "OWN_FEEDBACK_REFRESH_SECONDS", 0.2)
    reads: list[str] = []

    def counts(name: str) -> dict[str, ArmCounts]:
        reads.append(name)
        return {}

    states = state.ExperimentStates(counts, ThompsonSampler(1), time.time)
    states.push_only()
    for _ in range(500):
        states.invalidate(["hero"])
    assert reads == ["hero"]
    time.sleep(0.25)
    states.invalidate(["other"])  # the next feedback, after the interval: hero's tail too
    assert sorted(reads) == ["hero", "hero", "other"]
    states.invalidate(["hero"])  # moved again, not due
    states.refresh(["hero", "other"])  # the sync reads every experiment
    time.sleep(0.25)
    states.invalidate([])
    assert len(reads) == 5  # nothing left over from before the sync
