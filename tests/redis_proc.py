"""A private redis-server on a free port, for tests and benchmarks (never the shared one)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on a free port, in a temporary directory; restartable."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.extra = extra  # more redis-server options (``--cluster-enabled yes``)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (see .ci/run)")
        # appendonly with fsync always: a restart keeps every acknowledged write
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
             *self.extra],
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
            _terminate(self.process)
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


class SentinelTopology:
    """A primary, its replica and one Sentinel watching them (``service`` its name), all
    private on free ports: what ``redis+sentinel://`` URLs are tested against."""

    def __init__(self, directory: Path, service: str = "arbiter") -> None:
        self.directory, self.service = directory, service
        # a replica's full sync starts at once, not after Redis's 5 s default delay; on
        # SIGTERM no wait for a lagging replica (up to 10 s; every write is on disk)
        quick = ("--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now")
        self.primary = RedisServer(_subdirectory(directory, "a"), *quick)
        self.replica = RedisServer(_subdirectory(directory, "b"), *quick, "--replicaof",
                                   "127.0.0.1", str(self.primary.port))
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: its own copy
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n")
        self.sentinel = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # ready when the Sentinel knows the replica in sync (a failover needs one)
        self._wait(lambda: any(r.get("flags") == "slave" and r.get("master-link-status") == "ok"
                               for r in self._ask("SENTINEL", "REPLICAS", self.service)),
                   "the Sentinel to see the replica")

    def primary_port(self) -> int:
        return int(self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])

    def failover(self) -> None:
        """Promote the replica (SENTINEL FAILOVER) and wait until the Sentinel names it
        and it accepts writes."""
        before = self.primary_port()
        self._ask("SENTINEL", "FAILOVER", self.service)
        self._wait(lambda: self.primary_port() != before, "the Sentinel to name the replica")
        promoted = redis.Redis(port=self.primary_port())
        self._wait(lambda: promoted.role()[0] == b"master", "the replica to take writes")
        promoted.close()

    def stop(self) -> None:
        if self.sentinel is not None:
            _terminate(self.sentinel)
            self.sentinel = None
        self.replica.stop()
        self.primary.stop()

    def _ask(self, *command: str) -> Any:
        client = redis.Redis(port=self.sentinel_port, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    @staticmethod
    def _wait(ready: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.ResponseError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {seconds:.0f}s for {what}")
            time.sleep(0.1)


def _subdirectory(directory: Path, name: str) -> Path:
    (directory / name).mkdir(parents=True, exist_ok=True)
    return directory / name


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 3 s later (Redis exits in well under a
    second, but a replica restarted during a test's writes sometimes waited out a 10 s
    timeout; with appendfsync always every acknowledged write is on disk either way)."""
    process.terminate()
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
