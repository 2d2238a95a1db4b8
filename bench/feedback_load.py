"""Feedback throughput as impressions awaiting a reward pile up, against the health-Check floor.

    python -m bench.feedback_load --pending 1000,10000,100000 --stores memory,redis

For each store and each ``--pending`` size, a fresh ``arbiter serve`` (reward wait
30 min, so every impression stays unlabelled for the run) is given that many
impressions, then the load generator (its own process) drives the health Check and
Feedback alternately, ``--rounds`` times each, at ``--concurrency``. The claim under
test: the cost of a Feedback does not grow with the impressions awaiting a reward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.load import ROOT, arbiter_server, cpu_seconds
from tests.redis_proc import RedisServer


def loadgen(target: str, pid: int, rpc: str, args: argparse.Namespace, pending: int,
            seed: int, duration: float | None = None) -> dict[str, Any]:
    cpu_before = cpu_seconds(pid)
    seconds = args.duration if duration is None else duration
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", target, "--rpc", rpc,
           "--concurrency", str(args.concurrency), "--duration", str(seconds),
           "--pending", str(pending), "--seed", str(seed),
           "--warmup", "1" if seconds else "0"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    total = result["requests"] + result.get("warmup_requests", 0)
    result["server_cpu_us"] = (cpu_seconds(pid) - cpu_before) / max(total, 1) * 1e6
    return result


def wait_until_idle(pid: int, limit: float = 300.0) -> None:
    """Until the server uses under 5% of a core for a second (or ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.05:
            return


def measure(store: str, pending: int, redis_url: str | None,
            args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"check": [], "feedback": []}
    with arbiter_server(redis_url, args.workers, args.server_tree) as (target, pid):
        # leave `pending` impressions awaiting a reward, then let the server settle (its
        # background learner catches up) before anything is measured
        loadgen(target, pid, "feedback", args, pending, 99, duration=0)
        wait_until_idle(pid)
        for r in range(args.rounds):
            rounds["check"].append(loadgen(target, pid, "check", args, 0, r))
            rounds["feedback"].append(loadgen(target, pid, "feedback", args, 0, r))
    row: dict[str, Any] = {"store": store, "pending": pending}
    for rpc, results in rounds.items():
        for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us"):
            row[f"{rpc}_{key}"] = median(x[key] for x in results)
        row[f"{rpc}_errors"] = sum(x["errors"] for x in results)
    row["rps_ratio"] = row["feedback_rps"] / row["check_rps"]
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"concurrency {args.concurrency}, {args.workers} server threads, "
             f"{args.rounds} x {args.duration:g}s per RPC; medians over rounds", "",
             "| store | impressions awaiting a reward | Check req/s (floor) | Feedback req/s "
             "| Feedback/floor | Feedback p50 ms | p99 ms | server CPU us/Feedback | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['pending']:,} | {r['check_rps']:.0f} | {r['feedback_rps']:.0f} "
            f"| {r['rps_ratio']:.2f} | {r['feedback_p50_ms']:.2f} | {r['feedback_p99_ms']:.2f} "
            f"| {r['feedback_server_cpu_us']:.0f} | {r['feedback_errors']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pending", default="1000,10000,100000")
    p.add_argument("--stores", default="memory,redis")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--server-tree", type=Path, default=ROOT,
                   help="serve from this checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--json", help="write raw numbers here")
    args = p.parse_args()
    rows = []
    for store in args.stores.split(","):
        for pending in (int(n) for n in args.pending.split(",")):
            if store == "memory":
                rows.append(measure(store, pending, None, args))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                redis_ = RedisServer(Path(tmp))
                redis_.start()
                try:
                    rows.append(measure(store, pending, redis_.url, args))
                finally:
                    redis_.stop()
            print(table(rows, args), file=sys.stderr, flush=True)
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
