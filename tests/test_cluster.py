"""Arbiter on a Redis Cluster (``redis+cluster://``): every key of the namespace under one
hash tag, on the primary that serves its slot; served end to end, and through the
failover of that primary."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter
from tests.conftest import RETAIL, ROOT
from tests.redis_proc import ClusterTopology, free_port

D = 86400.0


def track_visits(stub: pb_grpc.DecisionServiceStub, user: str) -> None:
    now = time.time()
    for days in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5):
        at = pb.TrackEventRequest(user_id=user, event_type="visit")
        at.timestamp.FromSeconds(int(now - days * D))
        stub.TrackEvent(at, timeout=5)


def decide(stub: pb_grpc.DecisionServiceStub, user: str) -> pb.DecideResponse:
    return stub.Decide(pb.DecideRequest(user_id=user, placement="homepage_banner",
                                        channel="web"), timeout=5)


def visits(stub: pb_grpc.DecisionServiceStub, user: str) -> int:
    """The customer's visits as GetProfile reports them (-1: no profile)."""
    found = stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=5)
    if not found.found:
        return -1
    return sum(e.count for e in found.profile.events if e.event_type == "visit")


def cluster_keys(topology: ClusterTopology) -> dict[int, list[bytes]]:
    """Every key of the Cluster, by the port of the node that holds it."""
    out = {}
    for node in topology.nodes:
        if node.process is not None:
            client = redis.Redis(port=node.port)
            out[node.port] = sorted(client.scan_iter(count=1000))
            client.close()
    return out


def test_a_server_on_a_redis_cluster_serves_from_the_primary_of_one_slot(
        cluster_topology: ClusterTopology, cluster_url: str, retail: Ruleset) -> None:
    running = server.start(Arbiter(retail, RedisStore(cluster_url), seed=1), "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            track_visits(stub, "ann")
            d = decide(stub, "ann")
            assert d.actions and not d.degraded
            stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                             action_id=d.actions[0].action_id,
                                             outcome=pb.OUTCOME_CLICK), timeout=5)
            assert visits(stub, "ann") == 6
            holder = cluster_topology.primary_of("{arb}")
            keys = cluster_keys(cluster_topology)
            assert all(k.startswith(b"{arb}:") for k in keys[holder.port])
            assert len(keys[holder.port]) > 5
            assert not any(keys[port] for port in keys if port != holder.port)
            stub.ForgetProfile(pb.ForgetProfileRequest(user_id="ann"), timeout=5)
            assert visits(stub, "ann") == -1
    finally:
        running.stop(grace=0.5)


def test_the_failover_of_the_slots_primary_loses_nothing_acknowledged(
        tmp_path: Path, retail: Ruleset) -> None:
    """Writes acknowledged only once a replica has them (``replicas=1``); the primary
    killed: calls answer in time (degraded, or UNAVAILABLE) while the Cluster promotes
    its replica, the server then follows the new primary, and nothing acknowledged is
    lost (the profiles; a feedback counts once)."""
    topology = ClusterTopology(tmp_path, primaries=3, replicas=1)
    topology.start()
    running = server.start(Arbiter(retail, RedisStore(topology.url, replicas=1), seed=1),
                           "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            users = [f"u{i}" for i in range(4)]
            for user in users:
                track_visits(stub, user)
            d = decide(stub, users[0])
            assert not d.degraded
            feedback = pb.FeedbackRequest(decision_id=d.decision_id,
                                          action_id=d.actions[0].action_id,
                                          outcome=pb.OUTCOME_CLICK)
            assert not stub.Feedback(feedback, timeout=5).duplicate
            old = topology.primary_of("{arb}")
            old.kill()
            started = time.monotonic()
            during = decide(stub, users[1])  # in time, whatever Redis is doing
            assert time.monotonic() - started < 3.0 and during.degraded
            deadline = time.monotonic() + 30
            while topology.primary_of("{arb}") is old:
                assert time.monotonic() < deadline, "the Cluster never promoted the replica"
                time.sleep(0.1)
            old.start()  # back, as the replica of the promoted node (replicas=1 again)
            while decide(stub, users[1]).degraded:
                assert time.monotonic() < deadline, "the server never followed the failover"
                time.sleep(0.2)
            assert topology.primary_of("{arb}") is not old
            assert [visits(stub, user) for user in users] == [6] * len(users)
            assert stub.Feedback(feedback, timeout=5).duplicate
    finally:
        running.stop(grace=0.5)
        topology.stop()


def test_a_cluster_url_names_a_cluster_and_a_redis_url_one_server(
        cluster_topology: ClusterTopology, redis_url: str) -> None:
    from adapters.redis_store import RedisClusterNotSupported, check_server

    assert check_server(cluster_topology.url) == []
    node = cluster_topology.nodes[0]
    with pytest.raises(RedisClusterNotSupported, match="name the Cluster as redis\\+cluster"):
        check_server(node.url)
    standalone = redis_url.replace("redis://", "redis+cluster://").removesuffix("/0")
    with pytest.raises(RedisClusterNotSupported, match="not a Redis Cluster node"):
        check_server(standalone)
    for url, code in ((cluster_topology.url, 0), (node.url, 2), (standalone, 2)):
        report = subprocess.run(
            [sys.executable, "-m", "engine.cli", "report", "--models", "--rules",
             str(RETAIL), "--redis", url], cwd=ROOT, capture_output=True, text=True,
            timeout=60)
        assert report.returncode == code, report.stderr
        assert "Traceback" not in report.stderr


def test_namespaces_keep_deployments_apart_each_in_its_own_slot(
        cluster_topology: ClusterTopology, cluster_url: str) -> None:
    """Two deployments on one Cluster (``--namespace``): neither sees the other's
    customers, and each namespace is a hash tag of its own (a slot, maybe a primary)."""
    from engine.records import Profile

    shop, blog = RedisStore(cluster_url, namespace="shop"), RedisStore(cluster_url,
                                                                      namespace="blog")
    shop.update_profile("ann", lambda p: p or Profile(user_id="ann"))
    assert shop.get_profile("ann") is not None and blog.get_profile("ann") is None
    keys = [k for ks in cluster_keys(cluster_topology).values() for k in ks]
    assert keys == [b"{shop}:p:ann"]
    with pytest.raises(ValueError, match=re.escape("namespace 'a{b}'")):
        RedisStore(cluster_url, namespace="a{b}")


def test_a_node_that_does_not_answer_is_asked_last_afterwards(
        cluster_topology: ClusterTopology) -> None:
    """A dead node listed first would cost its connect timeout on every new connection;
    after it fails once, the live nodes are asked first."""
    from redis.crc import key_slot

    from adapters.redis_connect import _SlotPool, parse_cluster_url

    dead = ("127.0.0.1", free_port())
    cluster = parse_cluster_url(f"redis+cluster://{dead[0]}:{dead[1]},"
                                + cluster_topology.url.split("://")[1])
    assert cluster is not None
    pool = _SlotPool(cluster, key_slot(b"{arb}"), socket_connect_timeout=1.0)
    assert pool.primary()[1] == cluster_topology.primary_of("{arb}").port
    assert pool.ask_order[-1] == dead and pool.ask_order[0] != dead


def test_a_cluster_over_tls_serves_and_a_wrong_ca_is_refused(tmp_path: Path,
                                                             retail: Ruleset) -> None:
    """``rediss+cluster://...?ssl_ca_certs=CA``: the slot's primary asked and used over
    TLS (the Cluster answers TLS clients with its TLS ports); with a CA that did not sign
    the nodes' certificates the store is unavailable, not connected in the clear."""
    from tests.pki import connected_port, make_two_pkis, served_over_tls

    pki, other = make_two_pkis(tmp_path)
    topology = ClusterTopology(tmp_path / "cluster", pki=pki)
    topology.start()
    try:
        store = served_over_tls(topology.tls_url, retail, pki, other)
        assert connected_port(store.redis) in topology.tls_ports
    finally:
        topology.stop()
