"""Feedback counts once per outcome kind everywhere, and respects the decision's time."""

from __future__ import annotations

import pytest

from adapters.memory import MemoryStore
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
