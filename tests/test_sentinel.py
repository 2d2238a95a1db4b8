"""Redis behind Sentinel (``redis+sentinel://``): a failover loses nothing acknowledged
and the store, the asyncio Decide I/O and a served Arbiter follow the new primary.

Each test runs its own primary, replica and Sentinel (private redis-servers on free
ports) and promotes the replica with ``SENTINEL FAILOVER``. (The store contract over a
Sentinel URL is in ``test_store_contract.py``, harness ``redis-sentinel``.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import redis

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.ports import StoreUnavailable
from engine.profiles import record_event
from engine.records import DecisionRecord
from engine.service import Arbiter
from tests.conftest import ROOT
from tests.redis_proc import SentinelTopology, free_port

T = TypeVar("T")


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    topology = SentinelTopology(tmp_path)
    topology.start()
    yield topology
    topology.stop()


def replicated(topology: SentinelTopology) -> None:
    """Wait until the replica has every write so far (what a failover keeps: Redis
    replicates asynchronously, so a write acknowledged just before a primary dies can be
    lost unless the writer waits like this; README, Deployment)."""
    primary = redis.Redis(port=topology.primary_port())
    assert primary.execute_command("WAIT", 1, 5000) == 1
    primary.close()


def soon(attempt: Callable[[], T], seconds: float = 10.0) -> tuple[T, int]:
    """``attempt()``'s result once the store answers again, and how many attempts
    answered StoreUnavailable before (the connections to the old primary failing)."""
    failures, deadline = 0, time.monotonic() + seconds
    while True:
        try:
            return attempt(), failures
        except StoreUnavailable:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_store_follows_a_failover_and_keeps_what_was_replicated(
        topology: SentinelTopology) -> None:
    store = RedisStore(topology.url, cache_ttl=0)
    first = topology.primary_port()
    store.update_profile("ann", lambda p: record_event(p, "ann", "visit", 0.0, 100.0, {}), None)
    store.save_decision(DecisionRecord("d1", "ann", "home", "web", "rev", 100.0, []), 3600)
    replicated(topology)

    topology.failover()

    assert topology.primary_port() != first
    profile, _ = soon(lambda: store.get_profile("ann"))
    assert profile is not None and profile.events["visit"].count == 1
    soon(lambda: store.update_profile(
        "ann", lambda p: record_event(p, "ann", "visit", 0.0, 200.0, {}), None))
    assert store.get_decision("d1") is not None
    # the write went to the new primary
    promoted = redis.Redis(port=topology.primary_port())
    assert promoted.exists("arb:p:ann") and promoted.role()[0] == b"master"
    promoted.close()
    assert store.get_profile("ann").events["visit"].count == 2  # type: ignore[union-attr]
    store.close()


def test_the_asyncio_decide_io_follows_a_failover(topology: SentinelTopology) -> None:
    store = RedisStore(topology.url, cache_ttl=0)
    store.update_profile("bob", lambda p: record_event(p, "bob", "visit", 0.0, 100.0, {}), None)
    replicated(topology)

    async def scenario() -> int:
        io = store.decide_io()
        assert await io.get_profile("bob", 1.0) is not None
        topology.failover()
        failures, deadline = 0, time.monotonic() + 10
        while True:
            try:
                profile = await io.get_profile("bob", 1.0)
                await io.save_decision(
                    DecisionRecord("d2", "bob", "home", "web", "rev", 100.0, []), 3600, 1.0)
                break
            except StoreUnavailable:
                failures += 1
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert profile is not None
        await io.aclose()
        return failures

    asyncio.run(scenario())
    assert store.get_decision("d2") is not None
    store.close()


def test_a_served_arbiter_decides_personalised_again_soon_after_a_failover(
        topology: SentinelTopology, retail: Ruleset) -> None:
    store = RedisStore(topology.url, cache_ttl=0, decide_timeout=0.3)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0,
                           default_deadline=1.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            request = pb.DecideRequest(user_id="cat", placement="homepage_banner",
                                       channel="web")
            stub.TrackEvent(pb.TrackEventRequest(user_id="cat", event_type="visit"),
                            timeout=2)
            assert not stub.Decide(request, timeout=2).degraded
            replicated(topology)

            topology.failover()

            # degraded (never an error) while the old connections fail, then personalised
            started, answers = time.monotonic(), []
            while time.monotonic() - started < 10:
                reply = stub.Decide(request, timeout=2)
                answers.append(reply.degraded)
                if not reply.degraded:
                    break
                time.sleep(0.1)
            assert answers[-1] is False, answers
            # writes reach the new primary: acknowledged means stored there
            stub.TrackEvent(pb.TrackEventRequest(user_id="cat", event_type="visit"),
                            timeout=2)
            promoted = redis.Redis(port=topology.primary_port())
            assert promoted.exists("arb:p:cat")
            promoted.close()
    finally:
        running.stop(grace=0.5)


def test_arbiter_serve_takes_a_sentinel_url(sentinel_topology: SentinelTopology) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", "rulesets/retail",
         "--port", str(port), "--processes", "1", "--redis", sentinel_topology.url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.DecisionServiceStub(channel)
            stub.TrackEvent(pb.TrackEventRequest(user_id="dan", event_type="visit"),
                            timeout=5)
            reply = stub.Decide(pb.DecideRequest(user_id="dan", placement="homepage_banner",
                                                 channel="web"), timeout=5)
            assert reply.actions and not reply.degraded
        primary = redis.Redis(port=sentinel_topology.primary_port())
        assert primary.exists("arb:p:dan")
        primary.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode()
    assert b"with redis store" in output


def test_with_replicas_asked_a_write_is_acknowledged_only_once_they_have_it(
        topology: SentinelTopology, retail: Ruleset) -> None:
    """--redis-replicas 1: a write answers once the replica has it (so a failover keeps
    it); with the replica gone, writes are refused (UNAVAILABLE, degraded Decides) and a
    retried feedback is applied once when it is back."""
    replicated(topology)  # the replica in sync before the first write waits for it
    store = RedisStore(topology.url, cache_ttl=0, decide_timeout=0.5, replicas=1,
                       replica_timeout=1.0)
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0,
                           default_deadline=3.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            track = pb.TrackEventRequest(user_id="eve", event_type="visit")
            decide = pb.DecideRequest(user_id="eve", placement="homepage_banner",
                                      channel="web")
            stub.TrackEvent(track, timeout=3)
            decision = stub.Decide(decide, timeout=3)
            assert not decision.degraded
            replica = redis.Redis(port=topology.replica.port)
            assert replica.exists("arb:p:eve") and replica.exists(
                f"arb:d:{decision.decision_id}")  # there before the answer
            replica.close()

            topology.replica.stop()
            with pytest.raises(grpc.RpcError) as refused:
                stub.TrackEvent(track, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert stub.Decide(decide, timeout=3).degraded  # its record is not acknowledged
            click = pb.FeedbackRequest(decision_id=decision.decision_id,
                                       action_id=decision.actions[0].action_id,
                                       outcome=pb.OUTCOME_IMPRESSION, idempotency_key="k1")
            with pytest.raises(grpc.RpcError) as refused:
                stub.Feedback(click, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            topology.replica.start()
            deadline = time.monotonic() + 15
            while True:  # the retry, once the replica has caught up
                try:
                    reply = stub.Feedback(click, timeout=3)
                    break
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert reply.duplicate  # stored by the first attempt, counted once
            while stub.Decide(decide, timeout=3).degraded:  # records acknowledged again
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        running.stop(grace=0.5)


def test_with_replicas_asked_a_primary_killed_mid_writes_loses_nothing_acknowledged(
        topology: SentinelTopology) -> None:
    """The guarantee `--redis-replicas 1` exists for: four writers go on while the
    primary is killed (SIGKILL, writes in flight) and Sentinel promotes the replica;
    every write that was answered is on the new primary. (Writes after the failover are
    refused: the new primary has no replica left, so none can be acknowledged; that is
    the option's meaning.)"""
    store = RedisStore(topology.url, cache_ttl=0, replicas=1, replica_timeout=0.5)
    first = topology.primary_port()
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(name: str) -> None:
        i = 0
        while not stop.is_set():
            user = f"{name}-{i}"
            i += 1
            try:
                store.update_profile(user, lambda p, u=user: record_event(
                    p, u, "visit", 0.0, 100.0, {}), None)
                acknowledged.append(user)
            except StoreUnavailable:
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(acknowledged) < 20:  # the writers going
            assert time.monotonic() < deadline, "no write acknowledged"
            time.sleep(0.02)
        before = len(acknowledged)
        topology.primary.kill()
        deadline = time.monotonic() + 20
        while True:
            try:
                if topology.primary_port() != first:
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.05)
        time.sleep(0.5)  # writes on to the new primary (refused: no replica left)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    promoted = redis.Redis(port=topology.primary_port())
    missing = [u for u in acknowledged if not promoted.exists(f"arb:p:{u}")]
    promoted.close()
    assert not missing, (before, len(acknowledged), missing[:10])
    store.close()


def test_over_tls_the_sentinel_and_the_primary_are_reached_with_the_ca_given(
        tmp_path: Path, retail: Ruleset) -> None:
    """``rediss+sentinel://HOST:TLSPORT/SERVICE?ssl_ca_certs=CA``: TLS to the Sentinel
    and to the primary it names (monitored at its TLS port), sync and asyncio clients
    alike (a served Decide and feedback); with another CA, unavailable, never clear."""
    from tests.pki import connected_port, make_two_pkis, served_over_tls

    pki, other = make_two_pkis(tmp_path)
    topology = SentinelTopology(tmp_path / "topology", pki=pki)
    topology.start()
    try:
        store = served_over_tls(topology.tls_url, retail, pki, other)
        assert connected_port(store.redis) == topology.tls_ports[0]
    finally:
        topology.stop()
