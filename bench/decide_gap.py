"""Where the Decide/Check gap comes from: the gRPC machinery for Decide's messages, or the
decision itself.

    python -m bench.decide_gap [--duration 5] [--users 5000] [--modes real,canned,timed]

Serves the retail example on the in-memory store (``engine.grpc.server.start``, one
process, the load generator in its own) three times, and runs the health ``Check`` and the
three-placement ``Decide`` mix against each:

* ``real``: the server as shipped;
* ``canned``: ``Decide`` answers, for each placement, a response made once at start-up by
  a real decision (the same messages on the wire, no decision work per call);
* ``timed``: the real handler, with its own CPU time measured per call on the serving
  thread, and the same handler timed afterwards in a tight loop on the same requests;
* ``batched`` (with ``--modes``): as ``timed``, but the Decides that arrive in one loop
  turn are decided back to back in one callback (does deciding each between gRPC's own
  work make it dearer? It does not: bench/RESULTS.md §25).

If ``canned`` costs what ``Check`` costs, everything Decide adds is the handler's own
work; the last two columns say what that work costs when served and in isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import grpc

from bench.load import ROOT, loadgen, seed_profiles
from tests.redis_proc import free_port

MODES = ("real", "canned", "timed", "batched")
CANNED_PLACEMENTS = (("homepage_banner", "web"), ("email", "email"), ("cart_page", "web"))


def _serve(mode: str, port: int) -> None:
    """The server process in ``mode`` (MODES); prints handler timings at exit."""
    from adapters.memory import MemoryStore
    from bench.loadgen import decide_requests
    from dsl.loader import load_path
    from engine.grpc import convert, server
    from engine.grpc.decision_service import DecisionServicer, _decide_arguments
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.service import Arbiter

    arbiter = Arbiter(load_path(ROOT / "rulesets/retail"), MemoryStore(), seed=1)
    calls = [0, 0.0]
    sizes = [0, 0]  # batched: loop turns with Decides, Decides

    def handle(request: pb.DecideRequest) -> pb.DecideResponse:
        return convert.decide_response(arbiter.decide(**_decide_arguments(request)))

    if mode == "canned":
        canned = {name: handle(pb.DecideRequest(user_id="user-0", placement=name,
                                                channel=channel))
                  for name, channel in CANNED_PLACEMENTS}

        async def canned_decide(self: DecisionServicer, request: pb.DecideRequest,
                                context: Any) -> pb.DecideResponse:
            return canned[request.placement]

        DecisionServicer.Decide = canned_decide  # type: ignore[method-assign]
    elif mode == "timed":
        async def timed_decide(self: DecisionServicer, request: pb.DecideRequest,
                               context: Any) -> pb.DecideResponse:
            started = time.thread_time()
            response = handle(request)
            calls[0] += 1
            calls[1] += time.thread_time() - started
            return response

        DecisionServicer.Decide = timed_decide  # type: ignore[method-assign]
    elif mode == "batched":
        pending: list[tuple[pb.DecideRequest, asyncio.Future[pb.DecideResponse]]] = []

        def flush() -> None:
            items = pending[:]
            pending.clear()
            sizes[0] += 1
            sizes[1] += len(items)
            started = time.thread_time()
            for request, future in items:
                future.set_result(handle(request))
            calls[0] += len(items)
            calls[1] += time.thread_time() - started

        async def batched_decide(self: DecisionServicer, request: pb.DecideRequest,
                                 context: Any) -> pb.DecideResponse:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            if not pending:
                loop.call_soon(flush)
            pending.append((request, future))
            return await future

        DecisionServicer.Decide = batched_decide  # type: ignore[method-assign]
    running = server.start(arbiter, port=port)
    server.serve_forever(running)
    if mode in ("timed", "batched") and calls[0]:
        make = decide_requests(5000, 7)
        requests = [make() for _ in range(3000)]
        for request in requests:  # warm: the loop's own caches, as the served calls were
            handle(request)
        started = time.thread_time()
        for request in requests:
            handle(request)
        tight = (time.thread_time() - started) / len(requests)
        print(json.dumps({"served_us": calls[1] / calls[0] * 1e6, "tight_us": tight * 1e6,
                          "mean_batch": sizes[1] / sizes[0] if sizes[0] else 1.0}),
              file=sys.stderr, flush=True)


def measure(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.decide_gap", "--serve", mode,
                             "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        seed_profiles(target, args.users)
        run = argparse.Namespace(concurrency=32, duration=args.duration, users=args.users)
        row = {"mode": mode, "check": loadgen(target, proc.pid, "check", run),
               "decide": loadgen(target, proc.pid, "decide", run)}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    timings = [line for line in err.splitlines() if line.startswith("{")]
    row.update(json.loads(timings[-1]) if timings else {})
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| server | Check req/s | Decide req/s | ratio | Check CPU µs/req | "
             "Decide CPU µs/req | handler µs served | handler µs tight loop |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        check, decide = r["check"], r["decide"]
        served = f"{r['served_us']:.0f}" if "served_us" in r else ""
        tight = f"{r['tight_us']:.0f}" if "tight_us" in r else ""
        lines.append(f"| {r['mode']} | {check['rps']:.0f} | {decide['rps']:.0f} | "
                     f"{decide['rps'] / check['rps']:.2f} | {check['server_cpu_us']:.0f} | "
                     f"{decide['server_cpu_us']:.0f} | {served} | {tight} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--modes", default="real,canned,timed",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port)
        return
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")
    rows = [measure(mode, args) for mode in modes]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
