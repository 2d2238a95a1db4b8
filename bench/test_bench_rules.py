"""pytest-benchmark: compiled rules against hand-written Python, and an in-process Decide.

    make bench-micro

The floor for rule evaluation is a hand-written Python function computing the same
segment on the same inputs; report the compiled tree's time as a ratio of it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_path
from dsl.runtime import count_within, days_since, last_at, sum_within
from engine.profiles import record_event
from engine.service import Arbiter
from tests.conftest import RETAIL

NOW = time.time()
DAY = 86400.0


@pytest.fixture(scope="module")
def facts() -> tuple[Any, ...]:
    ruleset = load_path(RETAIL)
    profile = record_event(None, "v", "purchase", 700.0, NOW - 3 * DAY, {})
    for i in range(8):
        record_event(profile, "v", "visit", 0.0, NOW - (i + 0.5) * DAY, {})
    attributes = {**ruleset.attribute_defaults, "user_id": "v", "known": True,
                  "first_seen": NOW - 30 * DAY, "last_seen": NOW}
    return (attributes, {"device": "web"}, profile.events, {}, NOW)


def handwritten_high_value_loyal(A: Any, C: Any, E: Any, S: Any, now: float) -> bool | None:
    """What a programmer would write for the high_value_loyal segment."""
    days = days_since(now, last_at(E.get("purchase")))
    if days is None or not days <= 30:
        return False if days is not None else None
    return sum_within(E.get("purchase"), now, None) > 500 and (
        count_within(E.get("visit"), now, 7 * DAY) > 5)


def test_segment_handwritten(benchmark: Any, facts: tuple[Any, ...]) -> None:
    assert benchmark(handwritten_high_value_loyal, *facts) is True


def test_segment_compiled(benchmark: Any, facts: tuple[Any, ...]) -> None:
    segment = next(s for s in load_path(RETAIL).segments if s.name == "high_value_loyal")
    assert benchmark(segment.fn, *facts) is True


def test_all_segments_compiled(benchmark: Any, facts: tuple[Any, ...]) -> None:
    segments = load_path(RETAIL).segments
    A, C, E, _, now = facts

    def run() -> dict[str, Any]:
        S: dict[str, Any] = {}
        for s in segments:
            S[s.name] = s.fn(A, C, E, S, now)
        return S

    assert run()["high_value_loyal"] is True
    benchmark(run)


@pytest.mark.parametrize("placement,channel", [("homepage_banner", "web"), ("email", "email")])
def test_decide_in_process(benchmark: Any, placement: str, channel: str) -> None:
    arb = Arbiter(load_path(RETAIL), MemoryStore(), seed=1)
    arb.track(user_id="v", event_type="purchase", properties={"value": 700.0},
              traits={"email_opt_in": True}, at=NOW - 3 * DAY)
    for i in range(8):
        arb.track(user_id="v", event_type="visit", at=NOW - (i + 0.5) * DAY)
    decision = benchmark(arb.decide, user_id="v", placement=placement, channel=channel)
    assert decision.actions


def test_decide_in_process_bagged(benchmark: Any, tmp_path: Any) -> None:
    """homepage_banner with ``model on homepage_banner { bagging: 10 }``: 10 predictions
    per candidate for the exact first-slot probability."""
    import shutil

    from engine.learning.models import COLD_START_EXAMPLES

    shutil.copytree(RETAIL, tmp_path / "r")
    (tmp_path / "r" / "model.arb").write_text("model on homepage_banner { bagging: 10 }\n")
    arb = Arbiter(load_path(tmp_path / "r"), MemoryStore(), seed=1)
    arb.track(user_id="v", event_type="purchase", properties={"value": 700.0},
              traits={"email_opt_in": True}, at=NOW - 3 * DAY)
    for i in range(8):
        arb.track(user_id="v", event_type="visit", at=NOW - (i + 0.5) * DAY)
    for _ in range(400):  # past the cold start: the bag of the action it shows has learnt
        d = arb.decide(user_id="v", placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
    warm = [arb.models.examples_seen(a.action_id) for a in d.actions]
    assert min(warm) >= COLD_START_EXAMPLES, warm
    decision = benchmark(arb.decide, user_id="v", placement="homepage_banner", channel="web")
    assert decision.actions


def _contacts(per_action: int) -> tuple[Any, list[str], dict[str, list[tuple[float, str, str]]]]:
    """A profile with ``per_action`` contacts on each of 17 actions (packed, as this build
    writes them), the action ids, and the same history as lists of tuples."""
    from engine.decide.contacts import contact_entries
    from engine.profiles import record_contact

    actions = [f"action_{a}" for a in range(17)]
    profile = None
    for action in actions:
        for k in range(per_action):
            profile = record_contact(profile, "v", action, ("impression", "click")[k % 10 == 9],
                                     NOW - k * 3600.0, ("email", "web")[k % 3 == 0])
    assert profile is not None
    return profile, actions, {a: contact_entries(h) for a, h in profile.contacts.items()}


def handwritten_channel_count(history: dict[str, list[tuple[float, str, str]]],
                              now: float, window: float, channel: str) -> int:
    """What a programmer would write for a channel cap over (time, outcome, channel)."""
    return sum(1 for contacts in history.values() for at, outcome, where in contacts
               if outcome == "impression" and where == channel and now - window < at <= now)


@pytest.mark.parametrize("per_action", [20, 200])
def test_channel_cap_handwritten(benchmark: Any, per_action: int) -> None:
    _, _, lists = _contacts(per_action)
    assert benchmark(handwritten_channel_count, lists, NOW, 7 * DAY, "email") > 0


@pytest.mark.parametrize("per_action", [20, 200])
def test_channel_cap_packed(benchmark: Any, per_action: int) -> None:
    """``channel email: at most N per 7d`` counted from the packed contact logs."""
    from engine.decide.contacts import outcomes_within

    profile, actions, lists = _contacts(per_action)
    expected = handwritten_channel_count(lists, NOW, 7 * DAY, "email")
    assert benchmark(outcomes_within, profile, actions, NOW, 7 * DAY, "impression",
                     "email") == expected
