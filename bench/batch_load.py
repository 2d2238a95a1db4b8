"""Decisions per second through DecideBatch, per server process, against the floor.

    python -m bench.batch_load [--seconds 10] [--batch 500] [--placement email]
                               [--record-impressions] [--customers N] [--store redis]
                               [--alongside] [--processes N] [--server-tree DIR]

Starts ``arbiter serve`` (in memory, or ``--store redis`` on a private redis-server) as
a subprocess, seeds ``--customers`` profiles
(opted in to email, a cart left 30 hours ago: the email actions are eligible) and
sends batches of ``--batch`` decisions cycling through them, ``--in-flight`` calls at a
time (two by default: the client builds and reads one batch while the server decides
another, so the rate is the server's, as for a campaign sender with a few workers), for
``--seconds``; prints decisions/s and the health-Check rate measured one call at a time
as the floor of a single RPC. ``--record-impressions`` counts each decision's first
action as shown (a campaign's send: contact policies apply to the next batch), stored
with its record; ``--server-tree`` serves another checkout (a
"before"). ``--alongside``: another client decides ``homepage_banner`` one call at a
time on its own connection while the batches run (a campaign on a server that also
answers a site), its latencies reported. ``--processes N`` (Redis): ``arbiter serve
--processes N``, the client sending over 4N connections.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.feedback_load import wait_until_idle
from bench.load import ROOT, arbiter_server, cpu_seconds, deciding, private_redis
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

CHANNELS = {"email": "email", "homepage_banner": "web", "cart_page": "web"}


def seed(stub: pb_grpc.DecisionServiceStub, customers: int) -> None:
    """The customers, through TrackEventBatch (1,000 events a call)."""
    now = time.time()
    at = Timestamp()
    at.FromSeconds(int(now - 30 * 3600))
    for first in range(0, customers, 1000):
        events = [pb.TrackEventRequest(
            user_id=f"b{i}", event_type="add_to_cart", timestamp=at,
            properties={"value": pb.Value(number_value=80.0)},
            traits={"first_name": pb.Value(string_value="Ann"),
                    "email_opt_in": pb.Value(bool_value=True)})
            for i in range(first, min(first + 1000, customers))]
        response = stub.TrackEventBatch(pb.TrackEventBatchRequest(events=events), timeout=120)
        refused = [r.error for r in response.results if r.status]
        if refused:
            raise RuntimeError(f"seeding refused: {refused[0]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--placement", default="email")
    p.add_argument("--in-flight", type=int, default=2,
                   help="DecideBatch calls outstanding at once")
    p.add_argument("--customers", type=int, default=5000,
                   help="seeded customers (opted in to email, a cart left 30 h ago) the "
                        "batches cycle through")
    p.add_argument("--store", choices=("memory", "redis"), default="memory",
                   help="redis: a private redis-server (appendfsync always)")
    p.add_argument("--record-impressions", action="store_true",
                   help="each decision's first action counted as shown (a send)")
    p.add_argument("--request-ids", action="store_true",
                   help="each request with its own request_id (its answer kept: retry-safe)")
    p.add_argument("--alongside", action="store_true",
                   help="another client decides homepage_banner one call at a time on "
                        "its own connection while the batches run: its latencies")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes (--store redis); the client sends --in-flight "
                        "calls per process over four connections per process (the kernel "
                        "spreads connections, not calls, over processes)")
    p.add_argument("--learners", choices=("every", "one"), default="every",
                   help="arbiter serve --learners: every process learns, or one")
    p.add_argument("--server-tree", type=Path, default=ROOT,
                   help="serve this checkout (another measures a 'before')")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        redis_url = private_redis(stack) if args.store == "redis" else None
        if args.learners == "one":  # (its snapshots are signed: a key for this run)
            os.environ.setdefault("ARBITER_SNAPSHOT_KEY", "bench-batch-load")
        if args.processes > 1 and redis_url is None:
            p.error("--processes needs --store redis (processes share their state there)")
        target, pid = stack.enter_context(arbiter_server(
            redis_url, 4, tree=args.server_tree,
            extra=("--processes", str(args.processes), "--learners", args.learners)))
        channel = stack.enter_context(grpc.insecure_channel(target))
        stub = pb_grpc.DecisionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        connections = 1 if args.processes == 1 else 4 * args.processes
        stubs = [stub] + [  # a connection of its own each: the kernel spreads connections
            pb_grpc.DecisionServiceStub(stack.enter_context(grpc.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1)])))
            for _ in range(connections - 1)]
        seed(stub, args.customers)
        wait_until_idle(pid)  # the learner done with the seeding's events before timing
        decided, shown, calls, n, calls_sent = 0, 0, 0, 0, 0
        latencies: list[float] = []
        beside = contextlib.ExitStack()  # the other client: while the batches run
        stack.callback(beside.close)
        if args.alongside:  # (a channel of its own: another connection)
            latencies = beside.enter_context(deciding(
                beside.enter_context(grpc.insecure_channel(
                    target, options=[("grpc.use_local_subchannel_pool", 1)]))))
        in_flight: collections.deque[Any] = collections.deque()
        deadline = time.perf_counter() + args.seconds
        started, cpu_before = time.perf_counter(), cpu_seconds(pid)
        while True:
            more = time.perf_counter() < deadline
            if more and len(in_flight) < args.in_flight * args.processes:
                requests = [pb.DecideRequest(user_id=f"b{(n + i) % args.customers}",
                                             placement=args.placement,
                                             channel=CHANNELS[args.placement],
                                             request_id=f"r{n + i}" if args.request_ids
                                             else "")
                            for i in range(args.batch)]
                n += args.batch
                calls_sent += 1
                in_flight.append(stubs[calls_sent % len(stubs)].DecideBatch.future(
                    pb.DecideBatchRequest(requests=requests,
                                          record_impressions=args.record_impressions),
                    timeout=60))
                continue
            if not in_flight:
                break
            response = in_flight.popleft().result()
            decided += sum(1 for r in response.results if not r.error)
            shown += sum(1 for r in response.results if not r.error and r.decision.actions)
            calls += 1
        batch_rate = decided / (time.perf_counter() - started)
        beside.close()
        alongside = {}
        if args.alongside:
            ms = sorted(x * 1000 for x in latencies)
            alongside = {"alongside_decides": len(ms),
                         "alongside_p50_ms": round(ms[len(ms) // 2], 2),
                         "alongside_p99_ms": round(ms[int(len(ms) * 0.99)], 2),
                         "alongside_max_ms": round(ms[-1], 2)}
        cpu_us = (cpu_seconds(pid) - cpu_before) / max(decided, 1) * 1e6
        checks, started = 0, time.perf_counter()
        while time.perf_counter() - started < 3.0:
            health.Check(health_pb2.HealthCheckRequest())
            checks += 1
        check_rate = checks / (time.perf_counter() - started)
    print(json.dumps({"store": args.store, "processes": args.processes,
                      "learners": args.learners,
                      "placement": args.placement, "batch": args.batch,
                      "record_impressions": args.record_impressions,
                      "request_ids": args.request_ids,
                      "in_flight": args.in_flight,
                      "decisions_per_s": round(batch_rate), "calls": calls,
                      "with_an_action": round(shown / max(decided, 1), 3),
                      "server_cpu_us_per_decision": round(cpu_us, 1),
                      "sequential_check_per_s": round(check_rate), **alongside}))


if __name__ == "__main__":
    main()
