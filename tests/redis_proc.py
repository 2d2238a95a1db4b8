"""A private redis-server on a free port, for tests and benchmarks (never the shared one)."""

from __future__ import annotations

import functools
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

_handed_out: set[int] = set()
_random = random.SystemRandom()  # (not the global one, which tests may seed)


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, never handed out before in this process, and outside
    the kernel's range for outgoing connections: a port the kernel picked there (``bind``
    to 0) could be taken by a client's connection before the server bound it, and the
    server then failed to start (seen once in a full run: a Cluster node)."""
    low, high = _ephemeral_range()
    first, last = (10_000, low - 1) if low - 10_000 >= 5_000 else (high + 1, 65_535)
    for _ in range(1_000):
        port = _random.randint(first, last)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # someone listens there
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # (a crowded range: the kernel's choice)
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

    def __init__(self, directory: Path, service: str = "arbiter",
                 pki: Path | None = None) -> None:
        self.directory, self.service, self.pki = directory, service, pki
        # a replica's full sync starts at once, not after Redis's 5 s default delay; on
        # SIGTERM no wait for a lagging replica (up to 10 s; every write is on disk)
        quick: tuple[str, ...] = ("--repl-diskless-sync-delay", "0",
                                  "--shutdown-on-sigterm", "now")
        self.tls_ports = [free_port(), free_port(), free_port()]  # primary, replica, Sentinel
        if pki is not None:  # TLS beside the plain ports (the harness keeps those)
            quick += (*_tls_options(pki), "--tls-replication", "yes")
        self.primary = RedisServer(_subdirectory(directory, "a"), *quick,
                                   *self._tls_port(0))
        # over TLS the replica, and the Sentinel, reach the primary at its TLS port
        self.monitored_port = self.tls_ports[0] if pki is not None else self.primary.port
        self.replica = RedisServer(_subdirectory(directory, "b"), *quick, *self._tls_port(1),
                                   "--replicaof", "127.0.0.1", str(self.monitored_port))
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    def _tls_port(self, i: int) -> tuple[str, ...]:
        return ("--tls-port", str(self.tls_ports[i])) if self.pki is not None else ()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    @property
    def tls_url(self) -> str:
        """The same over TLS (``pki`` given): to the Sentinel and the data nodes."""
        assert self.pki is not None
        return (f"rediss+sentinel://127.0.0.1:{self.tls_ports[2]}/{self.service}/0"
                f"?ssl_ca_certs={self.pki / 'ca.pem'}")

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: its own copy
        tls = "" if self.pki is None else (
            f"tls-port {self.tls_ports[2]}\n" + "".join(
                f"{k.lstrip('-')} {v}\n" for k, v in zip(*[iter(_tls_options(self.pki))] * 2,
                                                          strict=True))
            + "tls-replication yes\n")
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n{tls}"
            f"sentinel monitor {self.service} 127.0.0.1 {self.monitored_port} 1\n"
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


class ClusterTopology:
    """A Redis Cluster of ``primaries`` private nodes, each with ``replicas`` replicas,
    slots spread evenly (built with CLUSTER MEET / ADDSLOTSRANGE / REPLICATE, no
    redis-cli): what ``redis+cluster://`` URLs are tested against. A failed primary is
    replaced by its replica within about a second (``cluster-node-timeout`` 500 ms)."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0,
                 pki: Path | None = None) -> None:
        options: tuple[str, ...] = (
            "--cluster-enabled", "yes", "--cluster-node-timeout", "500",
            "--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now")
        if pki is not None:  # TLS on a port of its own too (plain kept for the harness)
            options += (*_tls_options(pki), "--tls-cluster", "yes",
                        "--tls-replication", "yes")
        self.pki = pki
        self.nodes = []
        self.bus_ports = []  # (the default, port + 10000, is past 65535 for high ports)
        self.tls_ports: list[int] = []
        for i in range(primaries * (1 + replicas)):
            sub = _subdirectory(directory, f"n{i}")
            self.bus_ports.append(free_port())
            tls: tuple[str, ...] = ()
            if pki is not None:
                self.tls_ports.append(free_port())
                tls = ("--tls-port", str(self.tls_ports[-1]))
            self.nodes.append(RedisServer(sub, *options, *tls, "--cluster-config-file",
                                          str(sub / "nodes.conf"), "--cluster-port",
                                          str(self.bus_ports[-1])))
        self.primaries = primaries

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def tls_url(self) -> str:
        """The same Cluster over TLS (``pki`` given), trusting the test CA."""
        assert self.pki is not None
        return ("rediss+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.tls_ports)
                + f"?ssl_ca_certs={self.pki / 'ca.pem'}")

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # no node left running after a failed start
            raise

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._ask(node, "CLUSTER", "MEET", "127.0.0.1", str(first.port),
                      str(self.bus_ports[0]))
        share = 16384 // self.primaries
        for i, node in enumerate(self.nodes[:self.primaries]):
            last = 16383 if i == self.primaries - 1 else (i + 1) * share - 1
            self._ask(node, "CLUSTER", "ADDSLOTSRANGE", str(i * share), str(last))
        ids = [self._ask(n, "CLUSTER", "MYID") for n in self.nodes[:self.primaries]]
        for i, node in enumerate(self.nodes[self.primaries:]):
            primary = ids[i % self.primaries]
            SentinelTopology._wait(  # it must know the primary first (gossip)
                functools.partial(self._knows, node, primary), "a replica to learn its primary")
            self._ask(node, "CLUSTER", "REPLICATE", primary)
        SentinelTopology._wait(lambda: all(
            "cluster_state:ok" in self._ask(n, "CLUSTER", "INFO")
            for n in self.nodes if n.process is not None), "the Cluster to be ok")

    def primary_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        live = [node for node in self.nodes if node.process is not None]
        slot = int(self._ask(live[0], "CLUSTER", "KEYSLOT", key))
        for node in live:
            for start, end, primary, *_ in self._ask(node, "CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        for node in self.nodes[:self.primaries]:
            if node.process is not None and self._ask(node, "ROLE")[0] == "master":
                self._ask(node, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def _ask(node: RedisServer, *command: str) -> Any:
        client = redis.Redis(port=node.port, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _knows(self, node: RedisServer, primary: str) -> bool:
        """Whether ``node`` has heard of the node ``primary`` (by id) yet."""
        return primary in str(self._ask(node, "CLUSTER", "NODES"))


def _tls_options(pki: Path) -> tuple[str, ...]:
    """redis-server's TLS options with the test certificates (tests/pki.py); clients'
    certificates optional."""
    return ("--tls-cert-file", str(pki / "server.pem"), "--tls-key-file",
            str(pki / "server.key"), "--tls-ca-cert-file", str(pki / "ca.pem"),
            "--tls-auth-clients", "optional")


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
