"""The served API when Redis stalls or dies: answers within the deadline, degraded Decides,
UNAVAILABLE or DEADLINE_EXCEEDED writes that are never acknowledged unless stored,
liveness that never queues, readiness within a second, a quiet shutdown.

Each test runs a real gRPC server (grpc.aio) on a real port over a private
redis-server, stalled with ``CLIENT PAUSE`` or killed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.records import decode_event
from engine.service import Arbiter
from tests.conftest import RedisServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def pause(url: str, ms: int) -> None:
    client = redis.Redis.from_url(url)
    client.execute_command("CLIENT", "PAUSE", str(ms), "ALL")
    client.close()


@pytest.fixture
def served(redis_url: str, retail: Ruleset) -> Iterator[server.RunningServer]:
    store = RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0,
                           default_deadline=1.0)
    yield running
    running.stop(grace=0.5)


def channel_to(running: server.RunningServer) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{running.port}")


def test_decide_answers_degraded_within_a_short_deadline_while_redis_stalls(
        served: server.RunningServer, redis_url: str) -> None:
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        request = pb.DecideRequest(user_id="u1", placement="homepage_banner", channel="web")
        assert not stub.Decide(request, timeout=2).degraded
        pause(redis_url, 2500)
        answers: list[tuple[float, object]] = []

        def one(i: int) -> None:
            started = time.monotonic()
            try:
                reply = stub.Decide(pb.DecideRequest(
                    user_id=f"stalled-{i}", placement="homepage_banner", channel="web"),
                    timeout=0.2)
                answers.append((time.monotonic() - started, reply.degraded))
            except grpc.RpcError as err:
                answers.append((time.monotonic() - started, err.code()))  # type: ignore[attr-defined]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        # liveness on the main port, while 16 Decides wait on the stalled store
        started = time.monotonic()
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=1)
        assert time.monotonic() - started < 0.5 and check.status in (SERVING, NOT_SERVING)
        for t in threads:
            t.join()
        # every one answered, in time, and as a degraded decision (not an error)
        assert len(answers) == 16
        assert all(seconds < 0.35 for seconds, _ in answers), answers
        assert all(outcome is True for _, outcome in answers), answers
        time.sleep(2.6)
        assert not stub.Decide(request, timeout=2).degraded


def test_readiness_goes_not_serving_within_a_second_and_comes_back(
        served: server.RunningServer, redis_server: RedisServer) -> None:
    with channel_to(served) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING
        redis_server.kill()
        killed = time.monotonic()
        while health.Check(health_pb2.HealthCheckRequest(), timeout=1).status != NOT_SERVING:
            assert time.monotonic() - killed < 1.5, "readiness still SERVING"
            time.sleep(0.05)
        # every service the port serves has a readiness a probe can name (each needs the
        # store; the admin, report and catalogue services were NOT_FOUND)
        for name in server.SERVED_NAMES:
            assert _status_becomes(health, name, NOT_SERVING)
        redis_server.start()
        back = time.monotonic()
        while health.Check(health_pb2.HealthCheckRequest(), timeout=1).status != SERVING:
            assert time.monotonic() - back < 3.0, "readiness did not come back"
            time.sleep(0.05)
        for name in server.SERVED_NAMES:
            assert _status_becomes(health, name, SERVING)


def _status_becomes(health: health_pb2_grpc.HealthStub, name: str, status: Any) -> bool:
    """Whether ``name``'s health reaches ``status`` within half a second (all names are
    set one after another, in the same turn of the server's loop)."""
    until = time.monotonic() + 0.5
    while health.Check(health_pb2.HealthCheckRequest(service=name),
                       timeout=1).status != status:
        if time.monotonic() > until:
            return False
        time.sleep(0.02)
    return True


def test_feedback_during_a_stall_is_never_acknowledged_unless_stored(
        served: server.RunningServer, redis_url: str) -> None:
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        decision = stub.Decide(pb.DecideRequest(user_id="fb", placement="homepage_banner",
                                                channel="web"), timeout=2)
        action = decision.actions[0].action_id
        click = pb.FeedbackRequest(decision_id=decision.decision_id, action_id=action,
                                   outcome=pb.OUTCOME_CLICK, idempotency_key="k1")
        pause(redis_url, 1500)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Feedback(click, timeout=0.3)
        assert err.value.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() - started < 0.6
        # no client deadline: the server's default (1 s here) answers, never a hang
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.TrackEvent(pb.TrackEventRequest(user_id="fb", event_type="visit"))
        assert err.value.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() - started < 1.5
        time.sleep(1.6)
        # the retry after the stall: applied once in all (the first try may have landed)
        stub.Feedback(click, timeout=5)
        again = stub.Feedback(click, timeout=5)
        assert again.duplicate
        entries = redis.Redis.from_url(redis_url).xrange("arb:learn")
        outcomes = [e for e in (decode_event(f[b"e"]) for _, f in entries)
                    if e is not None and e.decision_id]  # (not the track's cluster entry)
        assert len(outcomes) == 1


def _item(item_id: str) -> pb.Item:
    return pb.Item(id=item_id, attributes={"name": pb.Value(string_value=item_id),
                                           "category": pb.Value(string_value="shoes"),
                                           "price": pb.Value(number_value=30.0)})


def test_catalogue_and_operator_calls_keep_the_server_default_deadline_and_fail_fast(
        served: server.RunningServer, redis_url: str, redis_server: RedisServer) -> None:
    """CatalogueService on a stalled Redis: without a client deadline the server's default
    (1 s here, not the 10 s built in) answers DEADLINE_EXCEEDED; on a dead one
    UNAVAILABLE at once; once Redis is back an upsert is acknowledged and served."""
    with channel_to(served) as channel:
        catalogue = pb_grpc.CatalogueServiceStub(channel)
        first = catalogue.UpsertItems(pb.UpsertItemsRequest(items=[_item("n1")]), timeout=2)
        pause(redis_url, 3000)
        for call, request in ((catalogue.UpsertItems, pb.UpsertItemsRequest(
                items=[_item("n2")])), (catalogue.RemoveItems,
                                        pb.RemoveItemsRequest(item_ids=["n1"]))):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                call(request)  # no deadline of its own
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            assert time.monotonic() - started < 2.0
        time.sleep(3.2)
        back = catalogue.UpsertItems(pb.UpsertItemsRequest(items=[_item("n3")]), timeout=5)
        assert back.version > first.version
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            catalogue.UpsertItems(pb.UpsertItemsRequest(items=[_item("n4")]), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert time.monotonic() - started < 1.0
    served_items = served.arbiter.catalogue.items
    assert "n3" in served_items and "n4" not in served_items


def test_shutdown_with_redis_gone_logs_no_traceback(
        redis_url: str, redis_server: RedisServer, retail: Ruleset,
        caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0)
    with channel_to(running) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        decision = stub.Decide(pb.DecideRequest(user_id="s", placement="homepage_banner",
                                                channel="web"), timeout=2)
        stub.Feedback(pb.FeedbackRequest(decision_id=decision.decision_id,
                                         action_id=decision.actions[0].action_id,
                                         outcome=pb.OUTCOME_CLICK), timeout=2)
    redis_server.kill()
    time.sleep(1.2)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        running.stop(grace=0.5)
        assert time.monotonic() - started < 8
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    redis_server.start()


def test_concurrent_feedback_on_redis_is_applied_exactly_once_each(
        served: server.RunningServer, redis_url: str) -> None:
    """Feedback awaits the store's compare-and-set on the server's loop (no thread): many
    at once, retries of the same key among them, each counted once."""
    from concurrent.futures import ThreadPoolExecutor

    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        decisions = [stub.Decide(pb.DecideRequest(user_id=f"cf{i}", placement="homepage_banner",
                                                  channel="web"), timeout=5)
                     for i in range(20)]

        def send(i: int) -> bool:
            d = decisions[i % 20]
            return stub.Feedback(pb.FeedbackRequest(
                decision_id=d.decision_id, action_id=d.actions[0].action_id,
                outcome=pb.OUTCOME_IMPRESSION, idempotency_key=f"k{i % 20}"),
                timeout=10).duplicate

        with ThreadPoolExecutor(16) as pool:
            duplicates = list(pool.map(send, range(80)))  # each key sent 4 times
    assert duplicates.count(False) == 20 and duplicates.count(True) == 60
    entries = redis.Redis.from_url(redis_url).xrange("arb:learn")
    outcomes = [e for e in (decode_event(f[b"e"]) for _, f in entries)
                if e is not None and e.decision_id]
    assert len(outcomes) == 20
    trials = sum(float(v) for k, v in redis.Redis.from_url(redis_url).hgetall(
        "arb:arms:hero_test").items() if k.endswith(b":trials"))
    arms = sum(1 for d in decisions if d.actions[0].experiment == "hero_test")
    assert trials == arms  # one trial per decision shown an arm, however often it was sent


def test_concurrent_track_events_on_redis_lose_no_update(
        served: server.RunningServer, redis_url: str) -> None:
    """TrackEvent awaits the store's WATCH/MULTI on the server's loop: concurrent events of
    one customer all count, each item interaction reaches the learning log."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.records import decode_profile

    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)

        def send(i: int) -> None:
            stub.TrackEvent(pb.TrackEventRequest(
                user_id="busy", event_type="page_view", item_id=f"sku-{i % 5:03d}",
                properties={"value": pb.Value(number_value=1.0)}), timeout=10)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(60)))
        found = stub.GetProfile(pb.GetProfileRequest(user_id="busy"), timeout=5)  # awaited
        views = next(e for e in found.profile.events if e.event_type == "page_view")
        assert found.found and views.count == 60 and len(found.profile.items) == 60
        batch = stub.DecideBatch(pb.DecideBatchRequest(record_impressions=True, requests=[
            pb.DecideRequest(user_id="busy", placement="homepage_banner", channel="web")] * 2),
            timeout=10)
        assert all(not r.error for r in batch.results)
    client = redis.Redis.from_url(redis_url)
    profile = decode_profile(client.get("arb:p:busy"))
    assert profile.events["page_view"].count == 60
    assert profile.events["page_view"].total == 60.0
    entries = [decode_event(f[b"e"]) for _, f in client.xrange("arb:learn")]
    assert sum(1 for e in entries if e is not None and e.item_id) == 60
    impressions = [e for e in entries if e is not None and e.outcome == "impression"]
    assert len(impressions) == 2  # the batch's two decisions, each shown once


def test_past_the_concurrent_rpc_limit_new_calls_are_refused_at_once(retail: Ruleset) -> None:
    """Load shedding: with ``max_concurrent_rpcs`` calls in progress (here one open
    reflection stream), a new call is answered RESOURCE_EXHAUSTED at once instead of
    queueing; once the call ends, calls are served again."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from adapters.memory import MemoryStore

    running = server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0,
                           max_concurrent_rpcs=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        held = threading.Event()

        def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            held.wait(10)  # the stream stays open: one RPC in progress

        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            requests())
        next(stream)  # the stream is being served
        stub = pb_grpc.DecisionServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Decide(pb.DecideRequest(user_id="u", placement="email"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 1.0  # refused, not queued
        held.set()
        list(stream)
        assert stub.Decide(pb.DecideRequest(user_id="u", placement="email"), timeout=5)
    finally:
        channel.close()
        running.stop(grace=0.5)


def test_a_batch_on_a_stalled_or_corrupt_store_answers_degraded_decisions_in_time(
        served: server.RunningServer, redis_url: str) -> None:
    """DecideBatch on Redis reads a wave's profiles in one wait and writes its records in
    one: a corrupt profile makes only its own decision degraded (an unknown customer);
    while Redis stalls, every decision of the batch is answered degraded within the
    deadline, none refused, none recorded."""
    raw = redis.Redis.from_url(redis_url)
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for user in ("ok-1", "ok-2", "broken"):
            stub.TrackEvent(pb.TrackEventRequest(user_id=user, event_type="visit"), timeout=5)
        raw.set("arb:p:broken", b"\x00 not a profile")
        users = ["ok-1", "broken", "ok-2", "ok-1"]  # ok-1 twice: two waves

        def batch(timeout: float) -> pb.DecideBatchResponse:
            return stub.DecideBatch(pb.DecideBatchRequest(requests=[
                pb.DecideRequest(user_id=u, placement="homepage_banner", channel="web")
                for u in users]), timeout=timeout)

        answered = batch(5)
        assert [r.error for r in answered.results] == [""] * 4
        assert [r.decision.degraded for r in answered.results] == [False, True, False, False]
        recorded = [r.decision.decision_id for r in answered.results if r.decision.actions]
        assert recorded and all(raw.exists(f"arb:d:{d}") for d in recorded
                                if d != answered.results[1].decision.decision_id)
        pause(redis_url, 2000)
        started = time.monotonic()
        stalled = batch(0.8)
        assert time.monotonic() - started < 0.8
        assert [r.error for r in stalled.results] == [""] * 4
        assert all(r.decision.degraded and r.decision.actions for r in stalled.results)
    time.sleep(2.1)
    assert not any(raw.exists(f"arb:d:{r.decision.decision_id}") for r in stalled.results)
    raw.close()


def test_a_server_started_while_redis_is_down_serves_degraded_then_recovers(
        redis_server: RedisServer, redis_url: str, retail: Ruleset) -> None:
    """Redis down at start-up (a pod that starts before its Redis): the server starts
    anyway, not ready, deciding as for unknown customers (degraded) and refusing writes
    with UNAVAILABLE; once Redis answers it is ready within about a second, loads what
    Redis holds (the learning log) and decides for known customers again."""
    seeded = Arbiter(retail, RedisStore(redis_url), seed=1)
    for _ in range(7):
        seeded.track(user_id="vera", event_type="visit")
    seeded.track(user_id="vera", event_type="purchase", properties={"value": 700.0})
    seeded.store.close()
    redis_server.stop()
    started = time.monotonic()
    store = RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0,
                           default_deadline=1.0)
    try:
        assert time.monotonic() - started < 5
        with channel_to(running) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.DecisionServiceStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == NOT_SERVING
            request = pb.DecideRequest(user_id="vera", placement="homepage_banner",
                                       channel="web")
            degraded = stub.Decide(request, timeout=1)
            assert degraded.degraded and degraded.actions
            with pytest.raises(grpc.RpcError) as refused:
                stub.TrackEvent(pb.TrackEventRequest(user_id="vera", event_type="visit"),
                                timeout=1)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            redis_server.start()
            deadline = time.monotonic() + 5
            while health.Check(health_pb2.HealthCheckRequest(),
                               timeout=1).status != SERVING:
                assert time.monotonic() < deadline, "not ready after Redis came back"
                time.sleep(0.1)
            served = stub.Decide(request, timeout=1)
            assert not served.degraded
            profile = stub.GetProfile(pb.GetProfileRequest(user_id="vera"), timeout=1)
            assert profile.found
            logged = len(store.learning_events("", 1000))
            deadline = time.monotonic() + 5
            while running.arbiter.learner.applied < logged:  # learnt once Redis answers
                assert time.monotonic() < deadline, (running.arbiter.learner.applied, logged)
                time.sleep(0.1)
            assert logged > 0 and running.arbiter.learner.applied == logged
    finally:
        running.stop(grace=0.5)


def test_liveness_on_the_health_port_survives_a_redis_outage_but_not_a_wedged_loop(
        redis_url: str, redis_server: RedisServer, retail: Ruleset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``--health-port`` service: ``""`` is liveness (a Kubernetes liveness probe must
    not restart pods because Redis is down), the servicer's name mirrors readiness; a
    loop that stops turning (here for longer than a shortened threshold) fails liveness."""
    monkeypatch.setattr(server, "LIVENESS_STALL_SECONDS", 1.0)
    arbiter = Arbiter(retail, RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3), seed=1)
    release = threading.Event()
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=1.0, health_port=0)
    name = "arbiter.v1.DecisionService"

    def status(channel: grpc.Channel, service: str = "") -> int:
        return int(health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=1).status)

    def wait_for(check: Any, what: str, seconds: float = 3.0) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    try:
        with channel_to(running) as main, \
                grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe:
            assert (status(probe), status(probe, name), status(main)) == (
                SERVING, SERVING, SERVING)
            redis_server.kill()
            wait_for(lambda: status(main) == NOT_SERVING, "readiness still SERVING")
            wait_for(lambda: status(probe, name) == NOT_SERVING, "probe readiness SERVING")
            time.sleep(1.5)  # longer than the stall threshold: the loop still turns
            assert status(probe) == SERVING
            redis_server.start()
            wait_for(lambda: status(probe, name) == SERVING, "probe readiness not back")
            running.loop.call_soon_threadsafe(release.wait, 3.0)  # wedge the loop
            wait_for(lambda: status(probe) == NOT_SERVING, "liveness still SERVING")
            release.set()
            wait_for(lambda: status(probe) == SERVING, "liveness not back")
    finally:
        release.set()
        running.stop(grace=0.5)


def test_an_idle_server_stays_live_and_its_readiness_follows_the_store(
        redis_url: str, redis_server: RedisServer, retail: Ruleset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With no request on the main port at all (only probes, on the health port), the
    background loops still run: liveness stays SERVING past the stall threshold, and
    readiness turns NOT_SERVING when Redis goes. (The loops were scheduled from another
    thread without waking the event loop, so an idle server's never started: liveness
    failed 30 s after start, a probe would have restarted every quiet pod, and readiness
    never followed the store until some request woke the loop.)"""
    monkeypatch.setattr(server, "LIVENESS_STALL_SECONDS", 1.5)
    arbiter = Arbiter(retail, RedisStore(redis_url, cache_ttl=0, decide_timeout=0.3), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=1.0, health_port=0)
    name = "arbiter.v1.DecisionService"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe:
            def status(service: str = "") -> int:
                return int(health_pb2_grpc.HealthStub(probe).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1).status)

            time.sleep(3.0)  # twice the stall threshold, nothing on the main port
            assert (status(), status(name)) == (SERVING, SERVING)
            redis_server.kill()
            deadline = time.monotonic() + 3
            while status(name) != NOT_SERVING:
                assert time.monotonic() < deadline, "readiness still SERVING"
                time.sleep(0.05)
            assert status() == SERVING
    finally:
        running.stop(grace=0.5)


def test_more_concurrent_writes_than_a_connection_pool_holds_all_succeed(
        served: server.RunningServer, redis_url: str) -> None:
    """redis-py's asyncio pool holds 100 connections and refuses the 101st ("Too many
    connections"): a DecideBatch of 300 recorded sends (its feedbacks started at once,
    each on a connection of its own) was answered UNAVAILABLE. Writes ride shared round
    trips: all 300 sends, then 300 clicks in flight at once, succeed, each stored once."""
    from concurrent.futures import ThreadPoolExecutor

    users = [f"camp-{i}" for i in range(300)]
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        with ThreadPoolExecutor(32) as pool:  # 300 TrackEvents, many at once
            list(pool.map(lambda u: stub.TrackEvent(pb.TrackEventRequest(
                user_id=u, event_type="add_to_cart", timestamp=_hours_ago(30),
                traits={"email_opt_in": pb.Value(bool_value=True)}), timeout=10), users))
        batch = stub.DecideBatch(pb.DecideBatchRequest(record_impressions=True, requests=[
            pb.DecideRequest(user_id=u, placement="email", channel="email") for u in users]),
            timeout=30)
        assert [r.error for r in batch.results] == [""] * 300
        shown = [r.decision for r in batch.results if r.decision.actions]
        assert len(shown) == 300  # a cart left 30 h ago, opted in: a reminder each
        clicks = [stub.Feedback.future(pb.FeedbackRequest(
            decision_id=d.decision_id, action_id=d.actions[0].action_id,
            outcome=pb.OUTCOME_CLICK), timeout=10) for d in shown]
        assert all(not c.result().duplicate for c in clicks)  # 300 in flight at once
    entries = [decode_event(f[b"e"]) for _, f in redis.Redis.from_url(redis_url).xrange(
        "arb:learn")]
    outcomes = [e.outcome for e in entries if e is not None and e.outcome]
    assert outcomes.count("impression") == 300 and outcomes.count("click") == 300


def _hours_ago(hours: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    at = Timestamp()
    at.FromSeconds(int(time.time() - hours * 3600))
    return at


def test_two_servers_updating_one_customer_at_once_lose_no_event(
        redis_url: str, retail: Ruleset) -> None:
    """Two replicas on one Redis, 40 concurrent TrackEvents of one customer each: within
    a process one update per customer is in flight; across them the compare-and-set
    refuses the update made from a stale profile (the other replica's cached copy or
    read), which reads again: all 80 events count."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.records import decode_profile

    servers = [server.start(Arbiter(retail, RedisStore(redis_url, cache_ttl=5.0), seed=1),
                            "127.0.0.1", 0, default_deadline=10.0) for _ in range(2)]
    channels = [channel_to(s) for s in servers]
    try:
        stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]

        def send(i: int) -> None:
            stubs[i % 2].TrackEvent(pb.TrackEventRequest(
                user_id="hot", event_type="visit",
                properties={"value": pb.Value(number_value=1.0)}), timeout=10)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(80)))
    finally:
        for channel in channels:
            channel.close()
        for running in servers:
            running.stop(grace=0.5)
    profile = decode_profile(redis.Redis.from_url(redis_url).get("arb:p:hot"))
    assert profile.events["visit"].count == 80 and profile.events["visit"].total == 80.0


def test_a_track_event_retried_after_a_stall_with_its_event_id_counts_once(
        served: server.RunningServer, redis_url: str) -> None:
    """A TrackEvent that timed out while Redis stalled may or may not have landed; its
    retry with the same ``event_id`` counts the purchase once either way (without an id
    it would count twice), and concurrent copies of one event from many clients too."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.records import decode_profile

    purchase = pb.TrackEventRequest(user_id="buyer", event_type="purchase",
                                    event_id="order-7",
                                    properties={"value": pb.Value(number_value=80.0)})
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        pause(redis_url, 1500)
        with pytest.raises(grpc.RpcError) as err:
            stub.TrackEvent(purchase, timeout=0.3)
        assert err.value.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        time.sleep(1.6)
        answers = [stub.TrackEvent(purchase, timeout=5) for _ in range(2)]
        assert answers[1].duplicate
        scripts = _evals(redis_url)
        assert stub.TrackEvent(purchase, timeout=5).duplicate
        assert _evals(redis_url) == scripts  # a duplicate writes nothing
        bought = next(e for e in answers[1].profile.events if e.event_type == "purchase")
        assert bought.count == 1 and bought.total_value == 80.0
        with pytest.raises(grpc.RpcError) as err:  # another event under the same id
            stub.TrackEvent(pb.TrackEventRequest(
                user_id="buyer", event_type="purchase", event_id="order-7",
                properties={"value": pb.Value(number_value=95.0)}), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "event_id" in (err.value.details() or "")  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as err:
            stub.TrackEvent(pb.TrackEventRequest(user_id="buyer", event_type="visit",
                                                 event_id="x" * 300), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert (err.value.details() or "").startswith("event_id")  # type: ignore[attr-defined]

        def send(i: int) -> bool:
            return stub.TrackEvent(pb.TrackEventRequest(
                user_id="buyer", event_type="visit", event_id=f"visit-{i % 4}"),
                timeout=10).duplicate

        with ThreadPoolExecutor(16) as pool:
            duplicates = list(pool.map(send, range(40)))
        assert duplicates.count(False) == 4
    profile = decode_profile(redis.Redis.from_url(redis_url).get("arb:p:buyer"))
    assert profile.events["purchase"].count == 1 and profile.events["visit"].count == 4


def _evals(url: str) -> int:
    """Scripts Redis has run (every profile update is one)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_track_event_batch_applies_each_event_as_track_event_would(
        store: str, redis_url: str, retail: Ruleset) -> None:
    """TrackEventBatch: a customer's events in request order (a retried id inside the
    batch is a duplicate, the last trait wins), a refused event fails alone with the
    status it would have had, more than 1,000 events are refused whole. On Redis the
    events run concurrently on the round trips; in memory in turn."""
    from adapters.memory import MemoryStore

    backing = RedisStore(redis_url, cache_ttl=0) if store == "redis" else MemoryStore()
    running = server.start(Arbiter(retail, backing, seed=1), "127.0.0.1", 0)
    user = f"batch-{store}"

    def event(kind: str, **fields: Any) -> pb.TrackEventRequest:
        return pb.TrackEventRequest(user_id=fields.pop("user", user), event_type=kind,
                                    **fields)

    bought = {"value": pb.Value(number_value=10.0)}
    try:
        with channel_to(running) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            events = [event("purchase", event_id="o-1", properties=bought),
                      *(event("visit", user=f"{user}-{i}") for i in range(30)),
                      event("visit", traits={"first_name": pb.Value(string_value="A")}),
                      event("nonsense"),
                      event("purchase", event_id="o-1", properties=bought),
                      event("purchase", event_id="o-1",
                            properties={"value": pb.Value(number_value=99.0)}),
                      event("visit", traits={"first_name": pb.Value(string_value="B")})]
            results = stub.TrackEventBatch(pb.TrackEventBatchRequest(events=events),
                                           timeout=10).results
            assert [(r.status, r.duplicate) for r in results[:31]] == [("", False)] * 31
            assert [(r.status, r.duplicate) for r in results[31:]] == [
                ("", False), ("INVALID_ARGUMENT", False), ("", True),
                ("FAILED_PRECONDITION", False), ("", False)]
            assert results[32].error.startswith("event_type: 'nonsense'")
            found = stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=5).profile
            purchases = next(e for e in found.events if e.event_type == "purchase")
            assert (purchases.count, purchases.total_value) == (1, 10.0)
            assert found.attributes["first_name"].string_value == "B"
            with pytest.raises(grpc.RpcError) as err:
                stub.TrackEventBatch(pb.TrackEventBatchRequest(
                    events=[event("visit")] * 1001), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert (err.value.details() or "").startswith("events: at most 1000")  # type: ignore[attr-defined]
    finally:
        running.stop(grace=0.5)


def test_served_feedback_on_redis_writes_the_profile_layout_asked_for(
        redis_url: str, retail: Ruleset) -> None:
    """``--profile-layout pairs`` (a rolling upgrade from a build before session 18):
    the served Feedback on Redis, which awaits its compare-and-set on the loop, writes
    the contact history as lists too, as the library's Feedback does; an older build
    would read a packed one as a corrupt profile."""
    import msgspec

    arbiter = Arbiter(retail, RedisStore(redis_url, cache_ttl=0), seed=1,
                      profile_layout="pairs")
    running = server.start(arbiter, "127.0.0.1", 0)
    try:
        with channel_to(running) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            decision = stub.Decide(pb.DecideRequest(user_id="layout", placement="email",
                                                    channel="email"), timeout=5)
            stub.TrackEvent(pb.TrackEventRequest(user_id="layout", event_type="visit"),
                            timeout=5)
            decision = stub.Decide(pb.DecideRequest(
                user_id="layout", placement="homepage_banner", channel="web"), timeout=5)
            stub.Feedback(pb.FeedbackRequest(
                decision_id=decision.decision_id, action_id=decision.actions[0].action_id,
                outcome=pb.OUTCOME_CLICK), timeout=5)
    finally:
        running.stop(grace=0.5)
    stored = msgspec.msgpack.decode(redis.Redis.from_url(redis_url).get("arb:p:layout"))
    assert stored["contacts"] and all(isinstance(h, list) for h in stored["contacts"].values())
    assert all(isinstance(e["recent"], list) for e in stored["events"].values())


def test_arbiter_track_against_a_redis_that_goes_away_stops_and_a_rerun_goes_on(
        redis_server: RedisServer, redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    """The store down mid-load: each event of a TrackEventBatch is answered UNAVAILABLE on
    its own (the call itself succeeds), `arbiter track` sends them again, then stops,
    exit 1, saying where; with Redis back the same command loads the rest, and every
    line counts once."""
    from engine.cli import main

    store = RedisStore(redis_url, cache_ttl=0)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0,
                           default_deadline=5.0)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(f'{{"user_id": "load-{i % 7}", "event_type": "visit"}}\n'
                              for i in range(40)))
    target = ["--target", f"127.0.0.1:{running.port}", "--batch-size", "10"]
    try:
        redis_server.stop()
        with channel_to(running) as channel:
            results = pb_grpc.DecisionServiceStub(channel).TrackEventBatch(
                pb.TrackEventBatchRequest(events=[pb.TrackEventRequest(
                    user_id="load-0", event_type="visit")] * 3), timeout=5).results
        assert [r.status for r in results] == ["UNAVAILABLE"] * 3
        assert main(["track", str(events), *target, "--retries", "1"]) == 1
        redis_server.start()
        assert main(["track", str(events), *target]) == 0
        assert main(["track", str(events), *target]) == 0  # again: all duplicates
    finally:
        running.stop(grace=0.5)
    counts = [RedisStore(redis_url).get_profile(f"load-{u}") for u in range(7)]
    assert sum(p.events["visit"].count for p in counts if p is not None) == 40


def test_a_full_redis_is_resource_exhausted_and_nothing_is_acknowledged(
        served: server.RunningServer, redis_url: str) -> None:
    """Redis at its ``maxmemory`` without eviction refuses writes ("OOM command not
    allowed"): the calls answered UNAVAILABLE "retry", which a client did in vain, or (a
    catalogue change, on the synchronous client) INTERNAL. Now RESOURCE_EXHAUSTED saying
    the store is full; Decide answers degraded as in an outage; with room, all is well."""
    admin = redis.Redis.from_url(redis_url)
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        catalogue = pb_grpc.CatalogueServiceStub(channel)
        shown = stub.Decide(pb.DecideRequest(user_id="ann", placement="homepage_banner",
                                             channel="web"), timeout=5)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", str(used))  # full: any write that adds is refused
        admin.config_set("maxmemory-policy", "noeviction")
        try:
            for call in (
                    lambda: stub.TrackEvent(pb.TrackEventRequest(
                        user_id="bo", event_type="visit",
                        traits={"first_name": pb.Value(string_value="B" * 3000)}), timeout=5),
                    lambda: stub.Feedback(pb.FeedbackRequest(
                        decision_id=shown.decision_id, action_id=shown.actions[0].action_id,
                        outcome=pb.OUTCOME_IMPRESSION), timeout=5),
                    lambda: catalogue.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(
                        id="sku-new", attributes={"name": pb.Value(string_value="N" * 3000)})]),
                        timeout=5)):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
                assert "profile store is full" in (info.value.details() or "")
            decided = stub.Decide(pb.DecideRequest(user_id="cy", placement="homepage_banner",
                                                   channel="web"), timeout=5)
            assert decided.degraded and decided.actions  # its record could not be stored
            assert not stub.GetProfile(pb.GetProfileRequest(user_id="bo"), timeout=5).found
        finally:
            admin.config_set("maxmemory", "0")
        stub.TrackEvent(pb.TrackEventRequest(user_id="bo", event_type="visit"), timeout=5)
        assert stub.GetProfile(pb.GetProfileRequest(user_id="bo"), timeout=5).found
        reply = stub.Feedback(pb.FeedbackRequest(
            decision_id=shown.decision_id, action_id=shown.actions[0].action_id,
            outcome=pb.OUTCOME_IMPRESSION), timeout=5)
        assert not reply.duplicate  # refused before: applied now, once
    admin.close()


def test_a_campaign_never_writes_a_decision_the_store_could_not_serve(
        served: server.RunningServer, redis_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """While Redis stalled, DecideBatch answered degraded decisions (an unknown customer's,
    nothing recorded) and `arbiter decide --batch` wrote them to --out as the customers'
    own: a campaign sent generic messages, counted as done, and --resume skipped them. Now
    they are sent again with backoff; if the store stays away the run stops before them."""
    import json

    from engine.cli.app import main
    from engine.cli.commands import decide

    monkeypatch.setattr(decide, "BATCH", 4)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(10)))
    out = tmp_path / "decisions.jsonl"
    args = ["decide", "--target", f"127.0.0.1:{served.port}", "--batch", str(users),
            "--placement", "homepage_banner", "--channel", "web", "--out", str(out),
            "--record-impressions", "--run-id", "camp-1"]
    pause(redis_url, 700)  # a stall shorter than the retries: every customer decided
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == [f"c{i}" for i in range(10)]
    client = redis.Redis.from_url(redis_url)
    with channel_to(served) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for line in lines:  # each one the customer's, recorded with its send
            profile = stub.GetProfile(pb.GetProfileRequest(user_id=line["user_id"]))
            assert [c.impressions for c in profile.profile.contacts] == [1], line
    monkeypatch.setattr(decide, "BATCH_RETRIES", 1)
    pause(redis_url, 4000)  # a stall longer than them: the run stops, nothing written
    capsys.readouterr()
    assert main([*args[:-1], "camp-2"]) == 1
    err = capsys.readouterr().err
    assert "stopped after 0 of 10 users: degraded: the profile store did not answer" in err
    assert out.read_text() == "" and "--resume" in err
    client.execute_command("CLIENT", "UNPAUSE")
    client.close()


def test_arbiter_decide_says_when_a_decision_is_degraded(
        served: server.RunningServer, redis_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`arbiter decide --target` printed a degraded decision like the customer's own, and
    its --json dropped `degraded` (and an email's `best_send_at`)."""
    import json

    from engine.cli.app import main

    args = ["decide", "--target", f"127.0.0.1:{served.port}", "--user", "ann",
            "--placement", "homepage_banner", "--channel", "web"]
    pause(redis_url, 1500)
    assert main(args) == 0
    assert "degraded: the profile store did not answer" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["degraded"] is True
    client = redis.Redis.from_url(redis_url)
    client.execute_command("CLIENT", "UNPAUSE")
    client.close()
    assert main(args) == 0
    assert "degraded" not in capsys.readouterr().out
