"""Shared fixtures: the retail ruleset, a private redis-server, a real gRPC server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from adapters.memory import MemoryStore
from dsl.loader import load_path
from dsl.ruleset import Ruleset
from engine import server
from engine.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter

ROOT = Path(__file__).resolve().parent.parent
RETAIL = ROOT / "rulesets" / "retail"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on a free port, in a temporary directory; restartable."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (see .ci/run)")
        # appendonly with fsync always: a restart keeps every acknowledged write
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server_ = RedisServer(tmp_path_factory.mktemp("redis"))
    server_.start()
    yield server_
    server_.stop()


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
