"""The server's connections: bursts of new clients, connection age, keepalive pings."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter


def _burst(port: int, connections: int) -> collections.Counter[str]:
    """One Decide on each of ``connections`` new connections, all at once: status counts."""
    async def one(i: int) -> str:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            try:
                await pb_grpc.DecisionServiceStub(ch).Decide(
                    pb.DecideRequest(user_id=f"b{i}", placement="email"), timeout=30)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return "OK"

    async def burst() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(connections)))

    return collections.Counter(asyncio.run(burst()))


def test_a_burst_of_new_connections_waits_its_turn_up_to_the_pending_bound(
        retail: Ruleset) -> None:
    """2,500 clients connecting at once, a call each: every call is answered (gRPC's core
    cancels calls waiting to start past 1,000 by default: 180-200 of this burst before
    ``max_pending_rpcs``); with the bound below the burst, the core cancels the excess."""
    for pending, expect_all in ((server.MAX_PENDING_RPCS, True), (20, False)):
        running = server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0,
                               max_pending_rpcs=pending)
        try:
            statuses = _burst(running.port, 2500)
        finally:
            running.stop(grace=0.5)
        assert sum(statuses.values()) == 2500
        if expect_all:
            assert statuses == {"OK": 2500}
        else:
            assert statuses["CANCELLED"] > 0 and statuses["OK"] > 0, statuses


def test_connections_are_closed_for_their_age_without_failing_a_call(
        retail: Ruleset) -> None:
    """With ``max_connection_age``, a client calling without pause is moved to a new
    connection again and again (GOAWAY, so that it can land on another process or
    replica), and not one of its calls fails."""
    running = server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0,
                           max_connection_age=0.3)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    readies: list[float] = []
    lock = threading.Lock()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            with lock:
                readies.append(time.monotonic())

    channel.subscribe(on_state, try_to_connect=True)
    try:
        stub = pb_grpc.DecisionServiceStub(channel)
        calls, until = 0, time.monotonic() + 2.5
        while time.monotonic() < until:
            stub.Decide(pb.DecideRequest(user_id=f"a{calls % 50}", placement="email"),
                        timeout=5)
            calls += 1
    finally:
        channel.unsubscribe(on_state)
        channel.close()
        running.stop(grace=0.5)
    assert calls > 100
    assert len(readies) >= 3, readies  # connected, then reconnected at least twice


def test_a_clients_keepalive_pings_are_accepted_without_calls(
        retail: Ruleset, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client pinging its idle connection as often as the server allows (as Java and Go
    clients do with keepalive on) keeps it: gRPC's default policy (one ping in 5 minutes
    without calls) answers the third early ping with GOAWAY ``too_many_pings`` and closes
    the connection. The allowed interval is shortened here (10 s served) to keep the
    test short."""
    interval_ms = 1000
    monkeypatch.setattr(server, "CLIENT_PING_MIN_MS", interval_ms)
    running = server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}", options=[
        ("grpc.keepalive_time_ms", interval_ms), ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0)])
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append, try_to_connect=True)
    try:
        stub = pb_grpc.DecisionServiceStub(channel)
        stub.Decide(pb.DecideRequest(user_id="k", placement="email"), timeout=5)
        time.sleep(5.5 * interval_ms / 1000)  # five pings with no call in flight
        stub.Decide(pb.DecideRequest(user_id="k", placement="email"), timeout=5)
    finally:
        channel.unsubscribe(states.append)
        channel.close()
        running.stop(grace=0.5)
    ready = grpc.ChannelConnectivity.READY
    assert states.count(ready) == 1 and states[-1] == ready, states  # never reconnected
