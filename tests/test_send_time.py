"""Send-time optimisation: each customer's engagement by hour of the week, shrunk toward
the population's (shared by replicas), read by rules as best_send_hour() and carried on
email decisions as best_send_at."""

from __future__ import annotations

import pytest

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.loader import load_text
from engine.decide.send_time import hour_of_week
from engine.service import Arbiter

RULES = """
profile { timezone: string }
events: visit, email_open
placement mail { channels: email }
placement web { channels: web }
action newsletter { placements: mail, web  value: 1
  content { when: "{{ best_send_hour() }}" } }
segment evening_person = best_send_hour() >= 18
"""
MONDAY = 1_767_571_200.0  # 2026-01-05 00:00 UTC, a Monday
HOUR = 3600.0
NOW = MONDAY + 8 * HOUR  # Monday 08:00 UTC


def arbiter(store: object | None = None) -> Arbiter:
    return Arbiter(load_text(RULES), store or MemoryStore(clock=lambda: NOW),  # type: ignore[arg-type]
                   seed=1, clock=lambda: NOW)


def test_a_customer_gets_their_own_best_hour_and_the_email_decision_says_when() -> None:
    arb = arbiter()
    for week in (1, 2, 3):  # opened emails on Tuesdays at 19:00 UTC, three weeks running
        arb.track(user_id="ann", event_type="email_open",
                  at=NOW - week * 7 * 86400 + 24 * HOUR + 11 * HOUR)
    decision = arb.decide(user_id="ann", placement="mail", channel="email")
    assert decision.best_send_at == MONDAY + 24 * HOUR + 19 * HOUR  # Tuesday 19:00
    assert decision.actions[0].content["when"] == "19"
    assert "evening_person" in decision.segments
    web = arb.decide(user_id="ann", placement="web", channel="web")
    assert web.best_send_at is None  # only email decisions carry it


def test_clicks_count_and_the_hour_is_in_the_customers_time_zone() -> None:
    arb = arbiter()
    arb.track(user_id="bo", event_type="visit", traits={"timezone": "Asia/Tokyo"},
              at=NOW - 86400)  # Sunday 08:00 UTC: one engagement
    saturday_noon = MONDAY - 2 * 86400 + 12 * HOUR  # 21:00 in Tokyo
    arb.track(user_id="bo", event_type="email_open", at=saturday_noon - 7 * 86400)
    clicked = arb.decide(user_id="bo", placement="mail", channel="email", at=saturday_noon)
    arb.feedback(decision_id=clicked.decision_id, action_id="newsletter", outcome="click",
                 at=saturday_noon)
    decision = arb.decide(user_id="bo", placement="mail", channel="email")
    assert decision.best_send_at == saturday_noon + 7 * 86400  # this coming Saturday
    assert hour_of_week(decision.best_send_at) == hour_of_week(saturday_noon)
    assert decision.actions[0].content["when"] == "21"  # Tokyo time


def test_a_new_customer_gets_the_populations_best_hour() -> None:
    arb = arbiter()
    for i in range(20):  # everyone is active on Wednesdays at 07:00 UTC
        arb.track(user_id=f"u{i}", event_type="visit", at=MONDAY - 5 * 86400 + 7 * HOUR)
    arb.sync()  # the population is read back every second (the server's sync)
    decision = arb.decide(user_id="newcomer", placement="mail", channel="email")
    assert decision.best_send_at == MONDAY + 2 * 86400 + 7 * HOUR
    assert arb.decide(user_id="nobody-yet", placement="web", channel="web").actions


def test_with_no_engagement_anywhere_there_is_no_send_time(
        caplog: pytest.LogCaptureFixture) -> None:
    decision = arbiter().decide(user_id="first", placement="mail", channel="email")
    assert decision.best_send_at is None and decision.actions[0].content["when"] == ""
    assert "evening_person" not in decision.segments  # null: not in it, and no failure
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_replicas_share_the_population(redis_url: str) -> None:
    first = arbiter(RedisStore(redis_url, cache_ttl=0))
    second = arbiter(RedisStore(redis_url, cache_ttl=0))
    for i in range(10):
        first.track(user_id=f"r{i}", event_type="visit", at=MONDAY - 86400 + 15 * HOUR)
    first.sync()
    second.sync()
    decision = second.decide(user_id="elsewhere", placement="mail", channel="email")
    assert decision.best_send_at == MONDAY + 6 * 86400 + 15 * HOUR  # next Sunday 15:00


def test_best_send_at_travels_in_the_decide_response() -> None:
    import grpc

    from engine.grpc import server
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    arb = arbiter()
    arb.track(user_id="cy", event_type="email_open", at=MONDAY - 86400 + 10 * HOUR)
    running = server.start(arb, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            email = stub.Decide(pb.DecideRequest(user_id="cy", placement="mail",
                                                 channel="email"), timeout=5)
            web = stub.Decide(pb.DecideRequest(user_id="cy", placement="web",
                                               channel="web"), timeout=5)
    finally:
        running.stop(grace=0.2)
    assert email.HasField("best_send_at") and not web.HasField("best_send_at")
    assert email.best_send_at.seconds == MONDAY + 6 * 86400 + 10 * HOUR  # Sunday 10:00


@pytest.mark.parametrize("zone", ["Nowhere/Land", "Europe/Pariss", "+03:00", "../../etc/passwd"])
def test_a_time_zone_the_tz_database_lacks_is_refused_not_read_as_utc(zone: str) -> None:
    """Such a name was stored and read as UTC: the customer's hours and send time silently
    off by their offset."""
    from engine.requests import InvalidArgument

    arb = arbiter()
    with pytest.raises(InvalidArgument, match=r"traits.timezone: .* is not a time zone"):
        arb.track(user_id="cy", event_type="visit", traits={"timezone": zone})
    assert arb.get_profile("cy") is None
    arb.track(user_id="cy", event_type="visit", traits={"timezone": "Europe/Paris"})
    arb.track(user_id="cy", event_type="visit", traits={"timezone": ""})  # none: UTC
    profile = arb.get_profile("cy")
    assert profile is not None and profile.attributes["timezone"] == ""


def test_a_date_in_content_is_the_customers_own() -> None:
    """A renewal date stored as the customer's local midnight (as CRMs store dates) was
    printed in UTC: "your contract ends on 2026-01-19" for a customer in Paris whose
    contract ends on the 20th. Dates print in the customer's time zone, as hour_of_day
    reads."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    rules = load_text("""
profile { timezone: string  renewal: timestamp }
events: visit
placement mail { channels: email }
action renew { placements: mail  value: 1
  content { t: "ends on {{ profile.renewal }}"  u: "{{ profile.renewal | upper }}" } }
""")
    arb = Arbiter(rules, MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    midnight = datetime(2026, 1, 20, tzinfo=ZoneInfo("Europe/Paris"))
    for user, zone in (("paris", "Europe/Paris"), ("tokyo", "Asia/Tokyo"), ("utc", None)):
        traits: dict[str, object] = {"renewal": midnight}
        if zone:
            traits["timezone"] = zone
        arb.track(user_id=user, event_type="visit", traits=traits, at=NOW - 60)
    content = {user: arb.decide(user_id=user, placement="mail").actions[0].content
               for user in ("paris", "tokyo", "utc")}
    assert content["paris"] == {"t": "ends on 2026-01-20", "u": "2026-01-20"}
    assert content["tokyo"]["t"] == "ends on 2026-01-20"  # 08:00 there
    assert content["utc"]["t"] == "ends on 2026-01-19"  # 23:00 UTC the day before
