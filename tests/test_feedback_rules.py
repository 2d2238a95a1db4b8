"""Feedback counts once per outcome kind everywhere, and respects the decision's time."""

from __future__ import annotations

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from dsl.ruleset import Ruleset
from engine.decide.contacts import contact_entries
from engine.ports import DecisionNotFound
from engine.requests import InvalidArgument
from engine.service import Arbiter

NOW = 1_767_614_400.0
DAY = 86400.0


@pytest.fixture
def arb(retail: Ruleset) -> Arbiter:
    return Arbiter(retail, MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)


def test_one_outcome_counts_once_in_caps_bandits_and_models(arb: Arbiter) -> None:
    d = arb.decide(user_id="ann", placement="homepage_banner", channel="web")
    action = d.actions[0]
    commits = [arb.feedback(decision_id=d.decision_id, action_id=action.action_id,
                            outcome="impression", idempotency_key=f"imp-{i}")
               for i in range(1, 4)]
    assert [c.duplicate for c in commits] == [False, False, False]  # three keys, acknowledged
    profile = arb.get_profile("ann")
    assert profile is not None
    assert [o for _, o, _ in contact_entries(profile.contacts[action.action_id])] == [
        "impression"]
    if action.experiment:
        assert arb.arm_counts(action.experiment)[action.action_id].trials == 1.0
    arb.learn()
    assert arb.models.examples_seen(action.action_id) == 1


def test_feedback_before_its_decision_is_invalid(arb: Arbiter) -> None:
    d = arb.decide(user_id="ann", placement="homepage_banner", channel="web")
    with pytest.raises(InvalidArgument) as err:
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="dismiss", at=NOW - 30 * DAY)
    assert err.value.field == "timestamp"
    assert arb.get_profile("ann") is None  # nothing written


def test_the_attribution_window_runs_from_the_decision_time(arb: Arbiter) -> None:
    old = arb.decide(user_id="ann", placement="homepage_banner", channel="web",
                     at=NOW - 8 * DAY)
    with pytest.raises(DecisionNotFound):
        arb.feedback(decision_id=old.decision_id, action_id=old.actions[0].action_id,
                     outcome="click")
    recent = arb.decide(user_id="ann", placement="homepage_banner", channel="web",
                        at=NOW - 6 * DAY)
    assert not arb.feedback(decision_id=recent.decision_id,
                            action_id=recent.actions[0].action_id, outcome="click").duplicate


WINDOWS = """
placement web { channels: web  attribution: 1h }
placement mail { channels: email }
action offer { placements: web, mail  value: 1 }
"""


def test_a_placement_takes_feedback_for_its_own_attribution_time() -> None:
    """``attribution: 1h`` on one placement: its decisions take feedback for an hour
    (their records and keys are kept that long, not the server's 7 days); another
    placement keeps the server's window; a shorter time in a reloaded ruleset applies at
    once, a longer one to the decisions made after it."""
    clock = [NOW]
    store = MemoryStore(clock=lambda: clock[0])
    arb = Arbiter(load_text(WINDOWS), store, seed=1, clock=lambda: clock[0])
    assert arb.attribution_for("web") == 3600 and arb.attribution_for("mail") == 7 * DAY
    web = [arb.decide(user_id="ann", placement="web", channel="web") for _ in range(2)]
    mail = arb.decide(user_id="ann", placement="mail", channel="email")
    clock[0] = NOW + 3599
    assert not arb.feedback(decision_id=web[0].decision_id, action_id="offer",
                            outcome="impression").duplicate
    assert store._keys[f"{web[0].decision_id}|d|offer|impression"][0] == NOW + 3600
    clock[0] = NOW + 3601  # past the hour: gone, and its key with it
    with pytest.raises(DecisionNotFound):
        arb.feedback(decision_id=web[1].decision_id, action_id="offer", outcome="click")
    assert store.get_decision(web[0].decision_id) is None
    clock[0] = NOW + 6 * DAY
    assert not arb.feedback(decision_id=mail.decision_id, action_id="offer",
                            outcome="click").duplicate
    assert not any(key.startswith(web[0].decision_id) for key in store._keys)  # (dropped
    # as the store goes: at its next write)
    later = arb.decide(user_id="bob", placement="mail", channel="email")
    arb.swap_ruleset(load_text(WINDOWS.replace("channels: email", "channels: email "
                                                                  " attribution: 1d")))
    clock[0] += DAY + 1  # the day of the new ruleset applies to feedback at once
    with pytest.raises(DecisionNotFound):
        arb.feedback(decision_id=later.decision_id, action_id="offer", outcome="click")
    assert arb.longest_attribution == 7 * DAY  # (the server's, still the longest)
