"""Campaigns sending to the same customers at once: do the contact caps hold?

    python -m bench.concurrent_campaigns [--campaigns 2] [--customers 2000] [--rounds 5]
                                         [--store redis] [--processes 1] [--request-ids]
                                         [--server-tree DIR]

Starts ``arbiter serve`` (``--store redis``: on a private redis-server, ``--processes``
processes; or in memory) on the retail example, seeds ``--customers`` customers opted in
to email, then runs ``--campaigns`` campaigns at once, each its own client thread and
connection: ``--rounds`` passes over every customer in recorded DecideBatch calls of
``--batch`` on the ``email`` placement (each decision's first action counted as sent). The
retail example caps the email channel at 3 sends a week, so no customer may have more
than 3 email impressions whatever the interleaving. Prints the sends answered, the
impressions counted per customer (from GetProfile), how many customers are over the cap,
answered sends without a stored record, and the decisions/s of all campaigns together.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import threading
import time
from pathlib import Path

import grpc
import redis

from adapters.redis_store import DEFAULT_CACHE_TTL
from bench.batch_load import seed
from bench.feedback_load import wait_until_idle
from bench.load import ROOT, arbiter_server, private_redis
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

EMAIL_CAP = 3
"""rulesets/retail/policies.arb: ``channel email: at most 3 per 7d``."""


def campaign(stub: pb_grpc.DecisionServiceStub, k: int, args: argparse.Namespace,
             sent: list[tuple[str, str]]) -> None:
    """Campaign ``k``: every customer ``--rounds`` times; its answered sends into ``sent``
    as (customer, decision id)."""
    for rnd in range(args.rounds):
        for first in range(0, args.customers, args.batch):
            users = [f"b{i}" for i in range(first, min(first + args.batch, args.customers))]
            response = stub.DecideBatch(pb.DecideBatchRequest(record_impressions=True, requests=[
                pb.DecideRequest(user_id=user, placement="email", channel="email",
                                 request_id=f"c{k}-{rnd}-{user}" if args.request_ids else "")
                for user in users]), timeout=60)
            for user, result in zip(users, response.results, strict=True):
                if result.error or result.decision.degraded:
                    raise RuntimeError(f"{user}: {result.error or 'degraded'}")
                if result.decision.actions:
                    sent.append((user, result.decision.decision_id))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--campaigns", type=int, default=2)
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--store", choices=("memory", "redis"), default="redis")
    p.add_argument("--processes", type=int, default=1, help="server processes (Redis)")
    p.add_argument("--request-ids", action="store_true",
                   help="each request with a request_id (as arbiter decide --batch sends)")
    p.add_argument("--server-tree", type=Path, default=ROOT,
                   help="serve this checkout (another measures a 'before')")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        if args.store != "redis" and args.processes > 1:
            p.error("--processes needs --store redis")
        redis_url = private_redis(stack) if args.store == "redis" else None
        target, pid = stack.enter_context(arbiter_server(
            redis_url, 4, tree=args.server_tree, extra=("--processes", str(args.processes))))
        stubs = [pb_grpc.DecisionServiceStub(stack.enter_context(grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)])))
            for _ in range(max(args.campaigns, 1))]
        seed(stubs[0], args.customers)
        wait_until_idle(pid)
        sent: list[tuple[str, str]] = []
        failed: list[BaseException] = []

        def run(k: int) -> None:
            try:
                campaign(stubs[k], k, args, sent)
            except BaseException as err:  # (reported below, not lost in the thread)
                failed.append(err)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(args.campaigns)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        if failed:
            raise failed[0]
        time.sleep(DEFAULT_CACHE_TTL + 0.1)  # (each process's profile cache: as stored)
        counts: collections.Counter[int] = collections.Counter()
        for i in range(args.customers):
            found = stubs[0].GetProfile(pb.GetProfileRequest(user_id=f"b{i}"), timeout=10)
            counts[sum(c.impressions for c in found.profile.contacts)] += 1
        unrecorded = None
        if redis_url is not None:
            client = redis.Redis.from_url(redis_url)
            unrecorded = sum(1 for _, decision in sent
                             if not client.exists(f"arb:d:{decision}"))
            client.close()
    decided = args.campaigns * args.rounds * args.customers
    print(json.dumps({
        "store": args.store, "processes": args.processes, "campaigns": args.campaigns,
        "customers": args.customers, "rounds": args.rounds, "request_ids": args.request_ids,
        "sends_answered": len(sent),
        "impressions_per_customer": {str(n): c for n, c in sorted(counts.items())},
        "over_the_cap": sum(c for n, c in counts.items() if n > EMAIL_CAP),
        "answered_without_record": unrecorded,
        "decisions_per_s": round(decided / seconds)}))


if __name__ == "__main__":
    main()
