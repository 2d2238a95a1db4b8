"""``arbiter serve --processes N``: N serving processes on one port, and a parent that
supervises them.

Python runs one thread of Python at a time, so one process uses one core. Each child
is a complete ``arbiter serve`` (its own engine, event loop and connections to the
shared Redis), started as a fresh interpreter (no fork after gRPC exists: grpc/grpc
#13873), listening on the same port with ``SO_REUSEPORT``; the kernel spreads incoming
*connections* over them (a client with one channel stays on one process; give clients
several channels or put an L7 proxy in front). The parent restarts a child that dies
(with a backoff when it keeps dying), and on SIGTERM passes the signal on and waits
for every child's pre-stop and drain.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("arbiter")

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before restarting a child that died soon after its previous start."""
STABLE_SECONDS = 30.0
"""A child that ran this long had a good start: its next restart is immediate."""
PR_SET_PDEATHSIG = 1
_OUTPUT = threading.Lock()


@dataclass
class Child:
    index: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restarts: int = 0
    ready: threading.Event = field(default_factory=threading.Event)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, kept open (not listening) so
    the port stays ours between child restarts; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a killed
    supervisor leaves no orphan serving."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Supervisor:
    """Starts, watches, restarts and stops the serving children."""

    def __init__(self, argvs: Sequence[list[str]], stop_timeout: float) -> None:
        self.children = [Child(i, argv) for i, argv in enumerate(argvs)]
        self.stop_timeout = stop_timeout
        self._stopping = threading.Event()

    def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.started = time.monotonic()
        child.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *child.argv], stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        threading.Thread(target=self._relay, args=(child, child.process), daemon=True,
                         name=f"arbiter-child-{child.index}").start()

    def _relay(self, child: Child, process: subprocess.Popen[bytes]) -> None:
        """The child's stdout, prefixed; its "serving" line marks it ready."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("arbiter: serving"):
                child.ready.set()
            _say(f"[process {child.index} pid {process.pid}] {line}")

    def start(self, timeout: float = 120.0) -> bool:
        """Start every child; True when all said they are serving within ``timeout``."""
        for child in self.children:
            self._spawn(child)
        deadline = time.monotonic() + timeout
        for child in self.children:
            while not child.ready.wait(0.1):
                if child.process is not None and child.process.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    return False
        return True

    def watch(self) -> None:
        """Restart children that exit, until :meth:`stop`."""
        while not self._stopping.wait(0.2):
            for child in self.children:
                process = child.process
                if process is None or process.poll() is None:
                    continue
                ran = time.monotonic() - child.started
                child.failures = 0 if ran > STABLE_SECONDS else child.failures + 1
                wait = (RESTART_BACKOFF_SECONDS[min(child.failures, len(
                    RESTART_BACKOFF_SECONDS)) - 1] if child.failures else 0.0)
                log.warning("process %d (pid %d) exited with %s after %.1fs; restarting%s",
                            child.index, process.pid, process.returncode, ran,
                            f" in {wait:.1f}s" if wait else "")
                if self._stopping.wait(wait):
                    return
                child.restarts += 1
                self._spawn(child)

    def stop(self) -> None:
        """SIGTERM to every child (each reports NOT_SERVING, waits its pre-stop, drains),
        then wait; a child still running after ``stop_timeout`` is killed."""
        self._stopping.set()
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process %d did not stop in time; killing it", child.index)
                child.process.kill()
                child.process.wait()


def child_argvs(argv: Sequence[str], processes: int, port: int,
                metrics_port: int | None, health_port: int | None,
                seed: int | None, decision_log: str | None = None) -> list[list[str]]:
    """Each child's command line: the parent's, then what differs per child (later flags
    win): one process, the shared port with SO_REUSEPORT, its own metrics and health
    ports (``PORT + index``; 0 stays 0: a free one each), seed (``seed + index``) and
    decision log (:func:`process_log_path`).

    >>> print(" ".join(child_argvs(["serve", "--redis", "r"], 2, 7000, 9100, None, 1)[1]))
    serve --redis r --processes 1 --port 7000 --reuse-port --metrics-port 9101 --seed 2
    """
    out = []
    for i in range(processes):
        extra = ["--processes", "1", "--port", str(port), "--reuse-port"]
        if metrics_port is not None:
            extra += ["--metrics-port", str(metrics_port + i if metrics_port else 0)]
        if health_port is not None:
            extra += ["--health-port", str(health_port + i if health_port else 0)]
        if seed is not None:
            extra += ["--seed", str(seed + i)]
        if decision_log:
            extra += ["--decision-log", process_log_path(decision_log, i)]
        out.append([*argv, *extra])
    return out


def process_log_path(path: str, index: int) -> str:
    """The decision log of serving process ``index``: one writer per file.

    >>> process_log_path("logs/decisions.jsonl", 1), process_log_path("decisions", 0)
    ('logs/decisions.1.jsonl', 'decisions.0')
    """
    file = Path(path)
    return str(file.with_name(f"{file.stem}.{index}{file.suffix}"))


def supervise(argv: Sequence[str], args: Any, processes: int) -> int:
    """Run ``processes`` children of ``arbiter serve`` on one port until SIGTERM/SIGINT."""
    try:
        reserved = reserve_port(args.host, args.port)
    except OSError as err:
        print(f"arbiter serve: cannot listen on {args.host}:{args.port}: "
              f"{err.strerror or err}", file=sys.stderr)
        return 1
    port = reserved.getsockname()[1]
    supervisor = Supervisor(
        child_argvs(argv, processes, port, args.metrics_port, args.health_port, args.seed,
                    args.decision_log),
        stop_timeout=args.pre_stop + args.drain + 15.0)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not supervisor.start():
            log.error("a serving process failed to start; stopping")
            return 1
        pids = ", ".join(str(c.process.pid) for c in supervisor.children if c.process)
        _say(f"arbiter: serving {args.rules} on {args.host}:{port} with {processes} "
             f"processes (pids {pids})")
        watcher = threading.Thread(target=supervisor.watch, name="arbiter-supervise",
                                   daemon=True)
        watcher.start()
        while not stop.wait(0.5):
            pass
        log.info("shutting down %d processes", processes)
        return 0
    finally:
        supervisor.stop()
        reserved.close()


def _say(line: str) -> None:
    """One whole line on stdout (the children's relays and the parent write from several
    threads; ``print`` writes the text and its newline separately, so lines ran together)."""
    with _OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
