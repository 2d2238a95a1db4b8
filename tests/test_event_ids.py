"""TrackEvent ids: a retried event is applied once, however the first attempt ended."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.event_ids import EVENT_ID_SECONDS, MAX_EVENT_IDS, event_digests, remember, seen
from engine.records import CorruptRecord, Profile, decode_profile, encode
from engine.requests import FailedPrecondition, InvalidArgument
from engine.service import Arbiter

NOW = 1_767_614_400.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30_000), st.integers(0, 6), st.integers(0, 1)),
                max_size=60),
       st.integers(2, 8))
def test_seen_and_remember_follow_a_plain_model(
        steps: list[tuple[float, int, int]], cap: int) -> None:
    """Against a list of (time, id, event) kept in arrival order: an id is known while it
    was received within the horizon and is among the newest ``cap``; the same event is a
    duplicate, another event under it a conflict; duplicates and conflicts are not
    remembered again (as TrackEvent does)."""
    import engine.event_ids as event_ids
    original = event_ids.MAX_EVENT_IDS
    event_ids.MAX_EVENT_IDS = cap
    try:
        profile, model, now = Profile(user_id="u"), [], NOW
        for step, ident, said in steps:
            now += step * 10
            digests = event_digests(f"id-{ident}", "view", float(said), "", {})
            live = [(t, i, s) for t, i, s in model[-cap:]
                    if t >= now - EVENT_ID_SECONDS and i == ident]
            expected = None if not live else live[0][2] == said
            assert seen(profile, digests, now) is expected
            if expected is None:
                remember(profile, digests, now)
                model.append((now, ident, said))
        assert len(profile.event_ids) <= 24 * cap
        assert decode_profile(encode(profile)).event_ids == profile.event_ids
    finally:
        event_ids.MAX_EVENT_IDS = original


def test_an_event_id_is_applied_once_for_a_day_and_the_newest_ids_are_kept() -> None:
    clock = [NOW]
    arb = Arbiter(load_text("events: purchase, visit"), MemoryStore(clock=lambda: clock[0]),
                  clock=lambda: clock[0])
    first = arb.track(user_id="ann", event_type="purchase", properties={"value": 20.0},
                      event_id="order-1")
    again = arb.track_plan(user_id="ann", event_type="purchase", properties={"value": 20.0},
                           event_id="order-1", at=NOW - 5)  # a retry may re-stamp
    assert arb.track_stored(again) == first and again.duplicate
    with pytest.raises(FailedPrecondition, match="event_id: already used for another event"):
        arb.track(user_id="ann", event_type="purchase", properties={"value": 25.0},
                  event_id="order-1")
    assert arb.track(user_id="bob", event_type="purchase", properties={"value": 20.0},
                     event_id="order-1").events["purchase"].count == 1  # ids are per customer
    clock[0] = NOW + EVENT_ID_SECONDS + 1  # a day later the id is new again
    assert arb.track(user_id="ann", event_type="purchase", properties={"value": 20.0},
                     event_id="order-1").events["purchase"].count == 2
    for i in range(MAX_EVENT_IDS):
        arb.track(user_id="ann", event_type="visit", event_id=f"visit-{i}")
    profile = arb.get_profile("ann")
    assert profile is not None and len(profile.event_ids) == 24 * MAX_EVENT_IDS
    plan = arb.track_plan(user_id="ann", event_type="purchase",
                          properties={"value": 20.0}, event_id="order-1")
    arb.track_stored(plan)  # pushed out by the newest 1,000: applied
    assert not plan.duplicate and arb.get_profile("ann").events["purchase"].count == 3  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument, match="longer than"):
        arb.track(user_id="ann", event_type="visit", event_id="x" * 257)


def test_a_damaged_list_of_event_ids_is_a_corrupt_profile() -> None:
    with pytest.raises(CorruptRecord, match="event_ids"):
        decode_profile(encode(Profile(user_id="u", event_ids=b"\x00" * 23)))


def test_a_logged_decision_leaves_the_event_ids_out() -> None:
    from engine.decision_log import decision_entry

    rules = load_text("placement web { channels: web }\naction a { placements: web  value: 1 }")
    arb = Arbiter(rules, MemoryStore(clock=lambda: NOW), clock=lambda: NOW)
    profile = arb.track(user_id="ann", event_type="visit", event_id="v-1")
    assert profile.event_ids
    decision = arb.decide(user_id="ann", placement="web", channel="web")
    entry = decision_entry(rules, decision, {}, profile)
    assert "event_ids" not in entry["profile"] and entry["profile"]["events"]


def test_a_duplicate_event_in_process_on_redis_writes_nothing(redis_url: str) -> None:
    """The library's own Redis path (WATCH/MULTI): a retried event leaves the stored
    profile as it was and writes neither it nor a learning-log entry."""
    import redis

    from adapters.redis_store import RedisStore

    arb = Arbiter(load_text("events: purchase, visit"), RedisStore(redis_url, cache_ttl=0))
    client = redis.Redis.from_url(redis_url)
    arb.track(user_id="ann", event_type="purchase", properties={"value": 20.0},
              event_id="order-1")
    before = client.get("arb:p:ann")
    client.config_resetstat()
    again = arb.track_plan(user_id="ann", event_type="purchase", properties={"value": 20.0},
                           event_id="order-1")
    arb.track_stored(again)
    stats = client.info("commandstats")
    assert again.duplicate and client.get("arb:p:ann") == before
    assert "cmdstat_set" not in stats and "cmdstat_xadd" not in stats
