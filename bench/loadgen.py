"""Load generator: runs in its own process, drives one RPC at a fixed concurrency.

    python -m bench.loadgen --target 127.0.0.1:50051 --rpc decide --concurrency 16 --duration 10

Prints one JSON line: requests, errors, seconds, throughput and latency percentiles
(milliseconds). ``--rpc check`` drives the standard health Check, the floor: the
cost of any RPC on this stack (Python gRPC server, loopback, this client).
``--rpc feedback`` first leaves ``--pending`` impressions awaiting a reward, then
measures clicks (see :func:`feedback_requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

PLACEMENTS = (("homepage_banner", "web"), ("email", "email"), ("cart_page", "web"))


def decide_requests(users: int, seed: int, only: str = "", request_ids: bool = False
                    ) -> Callable[[], pb.DecideRequest]:
    """The placements' mix (or ``only`` one) for random seeded customers; with
    ``request_ids`` each request has its own ``request_id`` (its answer kept)."""
    rng = random.Random(seed)
    placements = [p for p in PLACEMENTS if p[0] == only] if only else list(PLACEMENTS)
    sent = itertools.count()

    def make() -> pb.DecideRequest:
        placement, channel = placements[rng.randrange(len(placements))]
        context = {}
        if placement == "cart_page":
            context["cart_value"] = pb.Value(number_value=rng.uniform(10, 120))
        return pb.DecideRequest(user_id=f"user-{rng.randrange(users)}", placement=placement,
                                channel=channel, context=context,
                                request_id=f"lg-{seed}-{next(sent)}" if request_ids else "")

    return make


async def drive(calls: Sequence[Callable[[Any], Awaitable[Any]]], make: Callable[[], Any],
                concurrency: int, duration: float) -> dict[str, float]:
    """``concurrency`` workers, worker i on ``calls[i % len(calls)]`` (one per channel)."""
    latencies: list[float] = []
    errors = 0
    codes: dict[str, int] = {}
    deadline = time.perf_counter() + duration

    async def worker(call: Callable[[Any], Awaitable[Any]]) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            request = make()
            started = time.perf_counter()
            try:
                await call(request)
            except grpc.RpcError as err:
                errors += 1
                name = f"{err.code().name}: {err.details()}"
                codes[name] = codes.get(name, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": errors,
        "error_codes": codes,  # type: ignore[dict-item]
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p90_ms": float(np.percentile(ms, 90)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    }


async def feedback_requests(stub: Any, pending: int, pool: int, concurrency: int,
                            seed: int) -> Callable[[], pb.FeedbackRequest]:
    """Setup for ``--rpc feedback``: ``pending`` impressions awaiting a reward (decisions
    with an impression reported), and a pool of decisions the measured clicks go to.

    Each measured request is a click on a decision of the pool with its own
    idempotency key: applied once (a full commit: decision, profile, log, key), the
    same store work as a first click, however long the run.
    """
    async def shown(i: int, impression: bool) -> tuple[str, str]:
        d = await stub.Decide(pb.DecideRequest(user_id=f"fb-{seed}-{i}",
                                               placement="homepage_banner", channel="web"))
        action = d.actions[0].action_id
        if impression:
            await stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id=action,
                                                   outcome=pb.OUTCOME_IMPRESSION))
        return d.decision_id, action

    async def many(start: int, n: int, impression: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for first in range(start, start + n, concurrency):
            out += await asyncio.gather(*(shown(i, impression)
                                          for i in range(first, min(first + concurrency,
                                                                    start + n))))
        return out

    await many(0, pending, impression=True)
    decisions = await many(pending, pool, impression=False)
    counter = iter(range(10**12))

    def make() -> pb.FeedbackRequest:
        k = next(counter)
        decision_id, action = decisions[k % len(decisions)]
        return pb.FeedbackRequest(decision_id=decision_id, action_id=action,
                                  outcome=pb.OUTCOME_CLICK, idempotency_key=f"load-{seed}-{k}")

    return make


def track_requests(users: int, seed: int) -> Callable[[], pb.TrackEventRequest]:
    """``--rpc track``: page views of catalogue items (an item interaction each: the
    profile, its item history and a learning-log entry), customers in turn."""
    counter = iter(range(10**12))

    def make() -> pb.TrackEventRequest:
        k = next(counter)
        return pb.TrackEventRequest(user_id=f"user-{(k * 7919 + seed) % users}",
                                    event_type="page_view", item_id=f"sku-{k % 29 + 1:03d}")

    return make


async def run(args: argparse.Namespace) -> dict[str, float]:
    # each channel its own connection: with --processes N the kernel spreads connections
    channels = [grpc.aio.insecure_channel(args.target, options=[
        ("grpc.use_local_subchannel_pool", 1)]) for _ in range(args.channels)]
    try:
        for channel in channels:
            await channel.channel_ready()
        calls: list[Callable[[Any], Awaitable[Any]]]
        make: Callable[[], Any]
        if args.rpc == "check":
            calls = [health_pb2_grpc.HealthStub(c).Check for c in channels]
            make = health_pb2.HealthCheckRequest
        elif args.rpc == "track":
            calls = [pb_grpc.DecisionServiceStub(c).TrackEvent for c in channels]
            make = track_requests(args.users, args.seed)
        elif args.rpc == "feedback":
            stub = pb_grpc.DecisionServiceStub(channels[0])
            calls = [pb_grpc.DecisionServiceStub(c).Feedback for c in channels]
            make = await feedback_requests(stub, args.pending, args.pool, args.concurrency,
                                           args.seed)
        else:
            calls = [pb_grpc.DecisionServiceStub(c).Decide for c in channels]
            make = decide_requests(args.users, args.seed, args.placement, args.request_ids)
        warmup = await drive(calls, make, args.concurrency, args.warmup) if args.warmup else {}
        result = await drive(calls, make, args.concurrency, args.duration)
    finally:
        for channel in channels:
            await channel.close(None)
    return {"rpc": args.rpc, "concurrency": args.concurrency,
            "warmup_requests": warmup.get("requests", 0), **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--rpc", choices=("check", "decide", "feedback", "track"), required=True)
    p.add_argument("--pending", type=int, default=0,
                   help="feedback: impressions left awaiting a reward before measuring")
    p.add_argument("--pool", type=int, default=500, help="feedback: decisions clicked on")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--channels", type=int, default=1,
                   help="connections to spread the workers over (several server processes)")
    p.add_argument("--placement", default="",
                   help="decide: only this placement (default: the three-placement mix)")
    p.add_argument("--request-ids", action="store_true",
                   help="decide: each request with its own request_id (its answer kept)")
    print(json.dumps(asyncio.run(run(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
