"""Shared fixtures: the retail ruleset, a private redis-server, a real gRPC server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_path
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter
from tests.redis_proc import ClusterTopology, RedisServer, SentinelTopology, free_port

__all__ = ["RedisServer", "SentinelTopology", "free_port"]

ROOT = Path(__file__).resolve().parent.parent
RETAIL = ROOT / "rulesets" / "retail"


def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` came true within ``seconds`` (asked every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server_ = RedisServer(tmp_path_factory.mktemp("redis"))
    server_.start()
    yield server_
    server_.stop()


@pytest.fixture(scope="session")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A primary, its replica and a Sentinel, shared by the tests that only read and
    write through it (a failover test makes its own)."""
    topology = SentinelTopology(tmp_path_factory.mktemp("sentinel"))
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """A Redis Cluster of three primaries, shared by the tests that only read and write
    through it (a failover test makes its own, with replicas)."""
    topology = ClusterTopology(tmp_path_factory.mktemp("cluster"))
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def cluster_url(cluster_topology: ClusterTopology) -> str:
    cluster_topology.flush()
    return cluster_topology.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    yield redis_server.url


@pytest.fixture(scope="session")
def retail() -> Ruleset:
    return load_path(RETAIL)


@pytest.fixture
def arbiter(retail: Ruleset) -> Arbiter:
    return Arbiter(retail, MemoryStore(), seed=42)


@pytest.fixture
def running(arbiter: Arbiter) -> Iterator[server.RunningServer]:
    srv = server.start(arbiter, "127.0.0.1", 0, workers=8)
    yield srv
    srv.stop(grace=0.5)


@pytest.fixture
def stub(running: server.RunningServer) -> Iterator[pb_grpc.DecisionServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.DecisionServiceStub(channel)
    channel.close()
