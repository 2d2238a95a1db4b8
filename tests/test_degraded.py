"""Decide answers in time while Redis stalls (CLIENT PAUSE): an unknown customer, marked
degraded, not recorded."""

from __future__ import annotations

import time

import redis

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.service import Arbiter
from tests.conftest import RedisServer


def test_decide_degrades_while_redis_is_paused(redis_server: RedisServer, redis_url: str,
                                               retail: Ruleset) -> None:
    arb = Arbiter(retail, RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3), seed=1)
    for _ in range(7):
        arb.track(user_id="vera", event_type="visit")
    arb.track(user_id="vera", event_type="purchase", properties={"value": 700.0})
    normal = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
    assert not normal.degraded and "high_value_loyal" in normal.segments
    redis.Redis.from_url(redis_url).execute_command("CLIENT", "PAUSE", "2000", "ALL")
    started = time.monotonic()
    d = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
    elapsed = time.monotonic() - started
    assert d.degraded and elapsed < 1.5, elapsed
    assert d.segments == () or "high_value_loyal" not in d.segments  # an unknown customer
    assert d.actions  # non-personalised actions and fallbacks still answer
    time.sleep(2.2)
    assert not arb.decide(user_id="vera", placement="homepage_banner", channel="web").degraded
