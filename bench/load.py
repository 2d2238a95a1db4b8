"""Decide throughput and latency as a ratio of the health-Check floor, memory and Redis.

    python -m bench.load --duration 10 --concurrency 16

For each store it starts ``arbiter serve`` as a subprocess (and, for Redis, a
private ``redis-server``), seeds profiles with TrackEvent, then runs the load
generator (:mod:`bench.loadgen`, its own process) alternately on the health Check
and on Decide, ``--rounds`` times each, so floor and Decide share one run and one
machine state. Prints a Markdown table; ``--json FILE`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import grpc

from engine.grpc import convert
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from tests.redis_proc import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def run_in_tree(tree: Path, code: str, *args: str, core: int = 0) -> str:
    """The last line ``python -c code args`` prints, run in source tree ``tree`` (its
    directory and ``PYTHONPATH``) pinned to ``core`` where ``taskset`` exists: how the
    in-process benches measure one checkout against another."""
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    result = subprocess.run([*pin, sys.executable, "-c", code, *args], cwd=tree, check=True,
                            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                 "PYTHONHASHSEED": "0"},
                            capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (``--processes``), from
    /proc (Linux)."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    for one in (pid, *kids):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _one_process(tree: Path) -> tuple[str, ...]:
    """Measure one process unless asked otherwise (``serve`` defaults to one per core with
    Redis); an older checkout may not know the flag."""
    return ("--processes", "1") if tree == ROOT else ()


@contextmanager
def arbiter_server(redis_url: str | None, workers: int, tree: Path = ROOT,
                   rules: Path | None = None, extra: tuple[str, ...] = ()
                   ) -> Iterator[tuple[str, int]]:
    """``arbiter serve`` from a source tree (another checkout measures a "before")."""
    port = free_port()
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--rules",
           str(rules or tree / "rulesets/retail"), "--port", str(port), "--workers",
           str(workers), *(extra or _one_process(tree))]
    if redis_url:
        cmd += ["--redis", redis_url]
    proc = subprocess.Popen(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield target, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def private_redis(stack: ExitStack) -> str:
    """A private redis-server for this run (``tests.redis_proc``), stopped with
    ``stack``: its URL."""
    from tests.redis_proc import RedisServer

    server = RedisServer(Path(stack.enter_context(tempfile.TemporaryDirectory())))
    server.start()
    stack.callback(server.stop)
    return server.url


@contextmanager
def deciding(channel: grpc.Channel) -> Iterator[list[float]]:
    """One client deciding ``homepage_banner`` in a closed loop on its own thread while
    the block runs; yields the list its latencies (seconds) are appended to."""
    stub = pb_grpc.DecisionServiceStub(channel)
    latencies: list[float] = []
    stop = threading.Event()

    def decide() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            stub.Decide(pb.DecideRequest(user_id="x", placement="homepage_banner",
                                         channel="web"))
            latencies.append(time.perf_counter() - started)

    thread = threading.Thread(target=decide)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def seed_population(track: Callable[[str, str, float, float], object], users: int) -> None:
    """A population: VIPs, cart abandoners, readers, occasional visitors, unknowns, one
    of each in turn; ``track(user, event, seconds_ago, value)`` records an event. The
    in-process benches run this function's source in the checkout they measure."""
    for i in range(users):
        user, kind = f"user-{i}", i % 5
        if kind == 4:
            continue  # never seen: the onboarding path
        track(user, "visit", 40 * DAY, 0.0)
        if kind == 0:
            track(user, "purchase", 3 * DAY, 700.0)
            for d in range(6):
                track(user, "visit", (d + 0.5) * DAY, 0.0)
        elif kind == 1:
            track(user, "add_to_cart", 30 * 3600, 80.0)
        elif kind == 2:
            for m in range(4):
                track(user, "content_view", m * 60, 0.0)


IN_PROCESS_POPULATION = ("from __future__ import annotations\n"
                         + inspect.getsource(seed_population) + """
def _track_in_process(user, event, ago, value):
    arb.track(user_id=user, event_type=event, at=now - ago,
              properties={"value": value} if value else None)
""")
"""Source that defines :func:`seed_population` and ``_track_in_process`` (for an
``Arbiter`` named ``arb`` and a time ``now``), for the code the in-process benches run in
another checkout (which may not have the function)."""


TIMED_PASSES = """
def one_pass():
    started = time.perf_counter()
    for r in requests:
        convert.decide_response(arb.decide(**_decide_arguments(r))).SerializeToString()
    return (time.perf_counter() - started) / len(requests) * 1e6

one_pass()
print(json.dumps(min(one_pass() for _ in range(passes))))
"""
"""Source that times the in-process benches' ``requests`` on ``arb`` (best of ``passes``
passes, µs per decision: request conversion, the decision, the response serialized)
and prints it; it needs ``time``, ``json``, ``convert`` and ``_decide_arguments``."""


def seed_profiles(target: str, users: int) -> None:
    """:func:`seed_population` through TrackEvent."""
    now = time.time()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)

        def track(user: str, event: str, ago: float, value: float) -> None:
            stub.TrackEvent(pb.TrackEventRequest(
                user_id=user, event_type=event, timestamp=convert.timestamp(now - ago),
                properties={"value": pb.Value(number_value=value)}))

        seed_population(track, users)


def loadgen(target: str, pid: int, rpc: str, args: argparse.Namespace,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--target", target, "--rpc", rpc,
         "--concurrency", str(args.concurrency), "--duration", str(args.duration),
         "--users", str(args.users), *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        check=True)
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    # server CPU per request (includes the warm-up requests, counted by the client too)
    total = result["requests"] + result.get("warmup_requests", 0)
    result["server_cpu_us"] = (cpu_seconds(pid) - cpu_before) / max(total, 1) * 1e6
    return result


def measure(store: str, target: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    seed_profiles(target, args.users)
    rounds: dict[str, list[dict[str, Any]]] = {"check": [], "decide": []}
    for _ in range(args.rounds):
        for rpc in ("check", "decide"):
            rounds[rpc].append(loadgen(target, pid, rpc, args))
    row: dict[str, Any] = {"store": store}
    for rpc, results in rounds.items():
        for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us"):
            row[f"{rpc}_{key}"] = median(r[key] for r in results)
        row[f"{rpc}_errors"] = sum(r["errors"] for r in results)
    row["rps_ratio"] = row["decide_rps"] / row["check_rps"]
    row["p50_ratio"] = row["decide_p50_ms"] / row["check_p50_ms"]
    row["p99_ratio"] = row["decide_p99_ms"] / row["check_p99_ms"]
    row["cpu_ratio"] = row["decide_server_cpu_us"] / row["check_server_cpu_us"]
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"concurrency {args.concurrency}, {args.workers} server threads, "
        f"{args.rounds} x {args.duration:g}s per RPC, "
        f"{args.users} users; medians over rounds",
        "",
        "| store | RPC | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for rpc, name in (("check", "health Check (floor)"), ("decide", "Decide")):
            lines.append(f"| {r['store']} | {name} | {r[f'{rpc}_rps']:.0f} | "
                         f"{r[f'{rpc}_p50_ms']:.2f} | {r[f'{rpc}_p99_ms']:.2f} | "
                         f"{r[f'{rpc}_server_cpu_us']:.0f} | {r[f'{rpc}_errors']} |")
    lines += ["", "| store | Decide/floor throughput | p50 ratio | p99 ratio | server CPU ratio |",
              "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['rps_ratio']:.2f} | {r['p50_ratio']:.2f} | "
                     f"{r['p99_ratio']:.2f} | {r['cpu_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--stores", default="memory,redis")
    p.add_argument("--workers", type=int, default=4, help="server request threads")
    p.add_argument("--json", help="write raw numbers here")
    args = p.parse_args()
    rows = []
    for store in args.stores.split(","):
        if store == "memory":
            with arbiter_server(None, args.workers) as (target, pid):
                rows.append(measure(store, target, pid, args))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                redis_ = RedisServer(Path(tmp))
                redis_.start()
                try:
                    with arbiter_server(redis_.url, args.workers) as (target, pid):
                        rows.append(measure(store, target, pid, args))
                finally:
                    redis_.stop()
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
