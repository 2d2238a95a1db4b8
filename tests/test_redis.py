"""The Redis store against a private redis-server: atomicity, durability, replicas, restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from adapters.redis_store import RedisStore, check_server
from dsl.loader import load_text
from dsl.ruleset import DEFAULT_MODEL, Ruleset
from engine.ports import DecisionNotFound, StoreUnavailable
from engine.service import Arbiter
from tests.conftest import RedisServer, free_port

D = 86400.0


KEY = b"test snapshot key"


def vip(arb: Arbiter, user: str) -> None:
    now = time.time()
    arb.track(user_id=user, event_type="visit", at=now - 60 * D)
    for i in range(6):
        arb.track(user_id=user, event_type="visit", at=now - (i + 0.5) * D)


def click_top_banner(arb: Arbiter, user: str, times: int) -> None:
    """A VIP who clicks the top homepage action ``times`` times; then the models learn
    (what the server's background learner does)."""
    vip(arb, user)
    for _ in range(times):
        d = arb.decide(user_id=user, placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
    arb.learn()


def test_profile_round_trip_and_one_read_per_cached_decide(redis_url: str,
                                                           retail: Ruleset) -> None:
    store = RedisStore(redis_url, cache_ttl=60)
    arb = Arbiter(retail, store, seed=1)
    arb.track(user_id="ann", event_type="purchase", properties={"value": 120.0},
              traits={"first_name": "Ann"})
    fresh = RedisStore(redis_url, cache_ttl=0)
    profile = fresh.get_profile("ann")
    assert profile is not None
    assert profile.attributes["first_name"] == "Ann"
    assert profile.events["purchase"].total == 120.0
    # the writing replica's cache already holds the new profile: no GET on Decide
    calls = []
    original = store.redis.get
    store.redis.get = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[method-assign]
    arb.decide(user_id="ann", placement="homepage_banner", channel="web")
    assert calls == []


def test_concurrent_track_events_are_never_lost(redis_url: str, retail: Ruleset) -> None:
    arbs = [Arbiter(retail, RedisStore(redis_url, cache_ttl=0), seed=i) for i in range(2)]

    def hammer(arb: Arbiter) -> None:
        for _ in range(100):
            arb.track(user_id="hot", event_type="page_view", properties={"value": 1.0})

    threads = [threading.Thread(target=hammer, args=(a,)) for a in arbs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profile = RedisStore(redis_url, cache_ttl=0).get_profile("hot")
    assert profile is not None
    assert profile.events["page_view"].count == 400
    assert profile.events["page_view"].total == 400.0


def test_feedback_is_exactly_once_per_key_across_replicas(redis_url: str,
                                                          retail: Ruleset) -> None:
    a = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    b = Arbiter(retail, RedisStore(redis_url), seed=2, snapshot_key=KEY)
    vip(a, "vera")
    d = a.decide(user_id="vera", placement="homepage_banner", channel="web")
    arm = d.actions[0].action_id
    results = []

    def send(arb: Arbiter) -> None:
        results.append(arb.feedback(decision_id=d.decision_id, action_id=arm,
                                    outcome="click", idempotency_key="same").duplicate)

    threads = [threading.Thread(target=send, args=(x,)) for x in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True, True, True]
    assert a.store.arm_counts("hero_test")[arm].successes == 1.0
    with pytest.raises(DecisionNotFound):
        b.feedback(decision_id="missing", action_id=arm, outcome="click")


def test_two_replicas_converge_on_bandit_and_model_state(redis_url: str,
                                                         retail: Ruleset) -> None:
    a = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    b = Arbiter(retail, RedisStore(redis_url), seed=2, snapshot_key=KEY)
    vip(a, "vera")
    for i in range(40):
        arb = (a, b)[i % 2]
        d = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
    a.sync()
    b.sync()
    assert a.arm_counts("hero_test") == b.arm_counts("hero_test")
    assert sum(c.successes for c in a.arm_counts("hero_test").values()) == 40
    features = {"segment:frequent_visitor": 1.0}
    for action in ("vip_early_access", "new_arrivals", "free_shipping"):
        pa = a.models.predict(action, DEFAULT_MODEL, 0.05, features)
        pb = b.models.predict(action, DEFAULT_MODEL, 0.05, features)
        assert pa == pytest.approx(pb), action


def test_state_survives_a_service_restart(redis_url: str, retail: Ruleset) -> None:
    first = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    click_top_banner(first, "vera", 30)
    counts = first.arm_counts("hero_test")
    x = {"segment:frequent_visitor": 1.0, "context.channel=web": 1.0}
    learnt = {a: first.models.predict(a, DEFAULT_MODEL, 0.05, x) for a in counts}
    first.close()  # snapshots the models
    second = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    assert second.arm_counts("hero_test") == counts
    for action, p in learnt.items():
        assert second.models.predict(action, DEFAULT_MODEL, 0.05, x) == pytest.approx(p)


def test_restart_without_snapshot_replays_the_log(redis_url: str, retail: Ruleset) -> None:
    first = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    click_top_banner(first, "vera", 10)
    x = {"segment:frequent_visitor": 1.0}
    learnt = {a: first.models.predict(a, DEFAULT_MODEL, 0.05, x)
              for a in first.arm_counts("hero_test")}
    # no close(): as if the process died
    second = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    assert second.learner.applied == 10 + 2  # 10 outcomes, 2 days of her cluster features
    for action, p in learnt.items():
        assert second.models.predict(action, DEFAULT_MODEL, 0.05, x) == pytest.approx(p)


def test_acknowledged_feedback_survives_a_redis_crash(redis_server: RedisServer,
                                                      redis_url: str, retail: Ruleset) -> None:
    arb = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    vip(arb, "vera")
    d = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
    arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id, outcome="click")
    redis_server.kill()  # SIGKILL: only what was fsynced survives
    with pytest.raises(StoreUnavailable):
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="conversion")
    redis_server.start()
    after = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    assert after.arm_counts("hero_test")[d.actions[0].action_id].successes == 1.0
    profile = after.get_profile("vera")
    assert profile is not None and profile.events["visit"].count == 7
    # the connection pool of the first service recovers by itself
    arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                 outcome="conversion")
    assert after.learner.catch_up() == 1


def test_forget_deletes_profile_and_decisions(redis_url: str, retail: Ruleset) -> None:
    arb = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    arb.track(user_id="gone", event_type="visit", traits={"email": "g@example.com"})
    arb.decide(user_id="gone", placement="homepage_banner", channel="web")
    arb.decide(user_id="gone", placement="homepage_banner", channel="app")
    assert arb.forget("gone") == 3  # the profile and two decisions (as MemoryStore counts)
    client = redis.Redis.from_url(redis_url)
    assert [k for k in client.keys("*") if b"gone" in k] == []
    assert arb.get_profile("gone") is None


def test_grpc_reports_unavailable_and_health_while_redis_is_down(
        redis_server: RedisServer, redis_url: str, retail: Ruleset) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from engine.grpc import server
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    running = server.start(Arbiter(retail, RedisStore(redis_url, cache_ttl=0), seed=1),
                           "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            request = pb.DecideRequest(user_id="u", placement="email")
            assert stub.Decide(request).decision_id
            redis_server.kill()
            # Decide degrades (an unknown customer, not recorded); writes are UNAVAILABLE
            started = time.monotonic()
            degraded = stub.Decide(request, timeout=5)
            assert degraded.degraded and time.monotonic() - started < 2.0
            with pytest.raises(grpc.RpcError) as info:
                stub.TrackEvent(pb.TrackEventRequest(user_id="u", event_type="visit"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while health.Check(health_pb2.HealthCheckRequest()).status != (
                    health_pb2.HealthCheckResponse.NOT_SERVING):
                assert time.monotonic() < deadline, "health never reported NOT_SERVING"
                time.sleep(0.2)
            redis_server.start()
            deadline = time.monotonic() + 10
            while health.Check(health_pb2.HealthCheckRequest()).status != (
                    health_pb2.HealthCheckResponse.SERVING):
                assert time.monotonic() < deadline, "health never recovered"
                time.sleep(0.2)
            assert not stub.Decide(request).degraded
    finally:
        running.stop(grace=0.5)


def test_learning_stream_is_trimmed_below_what_every_replica_applied(
        redis_url: str, retail: Ruleset) -> None:
    a = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY)
    b = Arbiter(retail, RedisStore(redis_url), seed=2, snapshot_key=KEY)
    a.learner.snapshot_every = b.learner.snapshot_every = 20
    a.learner.snapshot_seconds = b.learner.snapshot_seconds = 0.0
    stream = f"{a.store.ns}:learn"  # type: ignore[attr-defined]
    vip(a, "vera")
    click_top_banner(a, "vera", 30)  # a snapshots; b has applied nothing: nothing trimmed
    assert a.learner.trimmed == 0
    b.sync()
    b.learner.snapshot()  # b checkpoints at the head: now both are past the first 30
    click_top_banner(a, "vera", 30)
    r = redis.Redis.from_url(redis_url)
    assert a.learner.trimmed + b.learner.trimmed >= 20
    cluster_entries = 2  # vip()'s events: her cluster features, once per day of them
    assert r.xlen(stream) == 60 + cluster_entries - a.learner.trimmed - b.learner.trimmed
    # a third replica starting now loads the snapshot and replays the rest: same models
    b.sync()
    c = Arbiter(retail, RedisStore(redis_url), seed=3, snapshot_key=KEY)
    x = {"segment:frequent_visitor": 1.0}
    for action in ("vip_early_access", "new_arrivals", "free_shipping"):
        assert c.models.predict(action, DEFAULT_MODEL, 0.05, x) == pytest.approx(
            b.models.predict(action, DEFAULT_MODEL, 0.05, x)), action


def test_the_learning_log_is_capped_with_no_snapshot_and_a_replica_gone_quiet(
        redis_url: str, retail: Ruleset) -> None:
    """Without a snapshot key nothing is ever saved, so every entry counted as needed and
    the stream grew with every event (a week of page views: the whole Redis). Now it
    keeps at most ``log_max_entries`` (about: whole stream nodes of 100 go), and a
    replica that stopped reading does not hold it either; what is left is still read."""
    a = Arbiter(retail, RedisStore(redis_url, log_max_entries=200), seed=1)
    quiet = Arbiter(retail, RedisStore(redis_url, log_max_entries=200), seed=2)
    quiet.learner.restore()  # registers at the start of the log, then never reads
    a.learner.snapshot_every, a.learner.snapshot_seconds = 100, 0.0
    stream = f"{a.store.ns}:learn"  # type: ignore[attr-defined]
    r = redis.Redis.from_url(redis_url)
    for i in range(900):
        a.track(user_id=f"u{i % 50}", event_type="page_view", item_id=f"sku-{i % 7}")
        if i % 100 == 99:
            a.learn()  # checkpoints every 100 entries: the store trims
    assert a.learner.trimmed >= 600
    assert 200 <= r.xlen(stream) <= 300
    assert a.learner.offset == r.xrevrange(stream, count=1)[0][0].decode()
    assert a.recommender.popular(3)  # it learnt as it went
    quiet.learn()  # the replica that fell behind reads on from what is left
    assert quiet.learner.offset == a.learner.offset


@pytest.mark.parametrize("batch", [100_000, 4_000])
def test_one_trim_drops_more_than_redis_default_limit(
        redis_url: str, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """An approximate XTRIM stops at 10,000 entries unless told otherwise: a log that took
    more than that between two trims (30 s apart: above ~330 events a second) was never
    brought back down, below the consumers' offsets or to its cap (a 3-minute soak at a
    cap of 50,000 ended at 113,000 entries). Now a trim goes on in calls of at most
    ``TRIM_BATCH`` until done. Whole stream nodes go, so a few more than asked may stay."""
    from adapters import redis_store

    monkeypatch.setattr(redis_store, "TRIM_BATCH", batch)
    r = redis.Redis.from_url(redis_url)

    def log(n: int) -> list[str]:
        pipe = r.pipeline(transaction=False)
        for _ in range(n):
            pipe.xadd("arb:learn", {"e": b"x" * 300})
        return [i.decode() for i in pipe.execute()]

    ids = log(25_000)
    store = RedisStore(redis_url, log_max_entries=0)  # below what is needed, no cap
    store.save_models(b"models", ids[-3_000])
    assert store.trim_learning_log("one", ids[-3_000]) >= 21_000
    assert 3_000 <= r.xlen("arb:learn") <= 3_200
    log(25_000)
    store.log_max_entries = 2_000  # and the cap, with everything still needed
    assert store.trim_learning_log("one", ids[-3_000]) >= 25_000
    assert 2_000 <= r.xlen("arb:learn") <= 2_200


def test_the_learning_log_cap_can_be_lifted(redis_url: str, retail: Ruleset) -> None:
    a = Arbiter(retail, RedisStore(redis_url, log_max_entries=0), seed=1)
    a.learner.snapshot_every, a.learner.snapshot_seconds = 100, 0.0
    for i in range(300):
        a.track(user_id=f"u{i % 50}", event_type="page_view", item_id=f"sku-{i % 7}")
    a.learn()
    assert a.learner.trimmed == 0  # no snapshot key: all is needed, as before
    assert redis.Redis.from_url(redis_url).xlen(f"{a.store.ns}:learn") == 300  # type: ignore[attr-defined]


def test_a_cached_profile_expiring_while_read_is_a_miss_not_an_error(redis_url: str) -> None:
    """The in-process cache is read with one lookup: a membership test then a read found
    the entry, then raised KeyError once it expired in between (an INTERNAL error on a
    busy DecideBatch, found by bench.batch_load)."""
    from cachetools import TTLCache

    clock = iter(x * 0.6 for x in range(1000))  # every read of the clock moves it on
    store = RedisStore(redis_url, cache_ttl=60)
    store._cache = TTLCache(maxsize=10, ttl=1.0, timer=lambda: next(clock))
    store.remember_profile("ann", b"bytes")  # stored at 0.0, expires at 1.0
    assert store.cached_profile("ann") == (True, b"bytes")  # read at 0.6
    assert store.cached_profile("ann") == (False, None)  # read at 1.2: expired, a miss


def test_the_cluster_check_lets_a_redis_that_refuses_info_start(tmp_path: Path) -> None:
    """Managed Redis services may rename or refuse INFO: the start-up check for a Cluster
    node must not stop a server there (only a Cluster node is refused)."""
    server = RedisServer(tmp_path, "--rename-command", "INFO", "")
    server.start()
    try:
        assert check_server(server.url) == []  # INFO refused: not known to be a Cluster
    finally:
        server.stop()
    assert check_server(f"redis://127.0.0.1:{free_port()}/0") == []  # down: it waits for it


def test_a_record_stored_as_a_map_by_an_earlier_build_takes_its_feedback(
        redis_url: str, retail: Ruleset) -> None:
    """Records are stored as arrays since session 13 (a quarter smaller); one a replica of
    the earlier build stored as a map of field names, still within its attribution window
    after an upgrade, decodes as the same record, takes feedback exactly once, teaches
    the models its features, and is written back in the new layout."""
    import msgspec

    from engine.records import decode_decision

    store = RedisStore(redis_url)
    arb = Arbiter(retail, store, seed=1)
    vip(arb, "olga")
    d = arb.decide(user_id="olga", placement="homepage_banner", channel="web")
    key = store._k("d", d.decision_id)
    stored = store.redis.get(key)
    assert stored is not None and stored[:1] == b"\x9a"  # an array of the 10 fields
    record = decode_decision(stored)
    assert record.features

    def as_map(struct: msgspec.Struct) -> dict[str, object]:  # as the earlier build wrote it
        out: dict[str, object] = {}
        for f in msgspec.structs.fields(struct):
            value = getattr(struct, f.name)
            default = f.default if f.default is not msgspec.NODEFAULT else (
                f.default_factory() if f.default_factory is not msgspec.NODEFAULT else None)
            required = (f.default is msgspec.NODEFAULT
                        and f.default_factory is msgspec.NODEFAULT)
            if required or value != default:
                out[f.name] = [as_map(a) for a in value] if f.name == "actions" else value
        return out

    legacy = msgspec.msgpack.encode(as_map(record))
    assert legacy[:1] != stored[:1] and len(legacy) > len(stored) * 1.15
    store.redis.set(key, legacy, keepttl=True)
    assert decode_decision(legacy) == record
    arm = d.actions[0].action_id
    first = arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="click",
                         idempotency_key="k1")
    again = arb.feedback(decision_id=d.decision_id, action_id=arm, outcome="click",
                         idempotency_key="k1")
    assert (first.duplicate, again.duplicate) == (False, True)
    rewritten = store.redis.get(key)
    assert rewritten is not None and rewritten[:1] == b"\x9a"
    assert decode_decision(rewritten).outcomes == {arm: ["impression", "click"]}  # implied
    events = [e for _, e in store.learning_events("", 100)
              if e is not None and e.decision_id == d.decision_id]
    assert len(events) == 1 and events[0].features == record.features and events[0].rewarded



def test_the_map_layout_writes_records_an_earlier_build_reads(redis_url: str,
                                                               retail: Ruleset) -> None:
    """``--record-layout map`` (a rolling upgrade from a build before session 13): records,
    the one Decide writes and the one feedback writes back, are maps of field names (what
    the earlier build's decoder reads), and the array layout's replica reads them too."""
    import msgspec

    from engine.records import decode_decision

    with pytest.raises(ValueError, match="record layout 'json'"):
        RedisStore(redis_url, record_layout="json")
    store = RedisStore(redis_url, record_layout="map")
    arb = Arbiter(retail, store, seed=1)
    vip(arb, "mira")
    d = arb.decide(user_id="mira", placement="homepage_banner", channel="web")
    key = store._k("d", d.decision_id)

    def as_earlier_build_reads(data: bytes) -> dict[str, object]:
        stored = msgspec.msgpack.decode(data)
        assert isinstance(stored, dict) and isinstance(stored["actions"][0], dict)
        return stored

    written = store.redis.get(key)
    assert written is not None and as_earlier_build_reads(written)["user_id"] == "mira"
    newer = Arbiter(retail, RedisStore(redis_url), seed=2)
    arm = d.actions[0].action_id
    assert not newer.feedback(decision_id=d.decision_id, action_id=arm,
                              outcome="impression").duplicate
    assert not arb.feedback(decision_id=d.decision_id, action_id=arm,
                            outcome="click").duplicate
    back = store.redis.get(key)
    assert back is not None
    assert as_earlier_build_reads(back)["outcomes"] == {arm: ["impression", "click"]}
    assert decode_decision(back).outcomes == {arm: ["impression", "click"]}


def test_records_and_keys_live_as_long_as_their_placement_takes_feedback(
        redis_url: str) -> None:
    """A placement's ``attribution: 1h``: its records and idempotency keys expire after
    the hour in Redis (not the server's 7 days), and a customer's indexes are never made
    to expire before a longer-lived record or key they hold (ForgetProfile finds them)."""
    rules = load_text("placement web { channels: web  attribution: 1h }\n"
                      "placement mail { channels: email }\n"
                      "action offer { placements: web, mail  value: 1 }\n")
    store = RedisStore(redis_url, cache_ttl=0)
    arb = Arbiter(rules, store, seed=1)
    mail = arb.decide(user_id="ann", placement="mail", channel="email")
    arb.feedback(decision_id=mail.decision_id, action_id="offer", outcome="impression")
    web = arb.decide(user_id="ann", placement="web", channel="web")
    arb.feedback(decision_id=web.decision_id, action_id="offer", outcome="impression")
    r = redis.Redis.from_url(redis_url)
    assert 3590 <= r.ttl(f"arb:d:{web.decision_id}") <= 3600
    assert 3590 <= r.ttl(f"arb:k:{web.decision_id}|d|offer|impression") <= 3600
    assert 7 * D - 10 <= r.ttl(f"arb:d:{mail.decision_id}") <= 7 * D
    assert 7 * D - 10 <= r.ttl(f"arb:k:{mail.decision_id}|d|offer|impression") <= 7 * D
    assert r.ttl("arb:udz:ann") >= 7 * D - 10 and r.ttl("arb:ukz:ann") >= 7 * D - 10
    assert arb.forget("ann")
    assert not r.exists(f"arb:d:{mail.decision_id}",
                        f"arb:k:{mail.decision_id}|d|offer|impression")


def test_catalogue_items_written_before_their_order_was_kept_come_first_and_stay(
        redis_url: str) -> None:
    """Items an earlier build wrote (no ``{items}:since`` entry) come first in the
    catalogue's order, in the hash's; replacing one later (a price) keeps its place and
    does not count as added again, which would make every replica build its catalogue
    anew for a price."""
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, cache_ttl=0)
    for version, item_id in enumerate(["old-b", "old-a"], 1):  # (as the old script did)
        client.hset("arb:{items}", item_id, b"1")
        client.zadd("arb:{items}:at", {item_id: version})
        client.set("arb:{items}:v", version)
    v3 = store.change_items({"new": b"1"}, ())
    v4 = store.change_items({"old-a": b"2"}, ())
    everything = store.catalogue_changes(0).items
    assert everything is not None and list(everything) == ["old-b", "old-a", "new"]
    assert store.catalogue_changes(v3) == (v4, {"old-a": b"2"}, frozenset(), False)
    store.change_items({}, ["old-b"])
    v6 = store.change_items({"old-b": b"3"}, ())  # (removed and back: now it has a place)
    assert store.catalogue_changes(v4).added == {"old-b"}
    everything = store.catalogue_changes(0).items
    assert everything is not None and list(everything) == ["old-a", "new", "old-b"]
    assert store.catalogue_changes(v6) == (v6, None, frozenset(), False)


def test_damaged_catalogue_order_keys_are_read_safely(redis_url: str) -> None:
    """A ``{items}:purged`` that is not a number makes a replica read everything (it
    cannot tell which removals it missed), and an added-at version of +inf or -inf orders
    the item last or first: a catalogue read never fails on them."""
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, cache_ttl=0)
    v1 = store.change_items({"a": b"1", "b": b"1"}, ())
    v2 = store.change_items({"c": b"1"}, ())
    client.set("arb:{items}:purged", b"garbage")
    assert store.catalogue_changes(v1).everything
    client.delete("arb:{items}:purged")
    client.zadd("arb:{items}:since", {"a": float("inf"), "c": float("-inf")})
    assert list(store.catalogue_changes(0).items or ()) == ["c", "b", "a"]
    assert store.catalogue_changes(v1) == (v2, {"c": b"1"}, frozenset(), False)
