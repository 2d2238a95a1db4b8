"""``arbiter serve``: serve a ruleset over gRPC until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging

from dsl.vocabulary import DEFAULT_REWARD_WAIT_SECONDS
from engine.cli.common import (
    add_snapshot_key_argument,
    default_rules,
    load_ruleset,
    open_store,
    snapshot_key,
)
from engine.decision_log import DecisionLog

log = logging.getLogger("arbiter")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a ruleset over gRPC")
    p.add_argument("--rules", default=default_rules(), help="ruleset directory or file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    p.add_argument("--redis", metavar="URL", help="redis://host:port/db (default: in memory)")
    p.add_argument("--workers", type=int, default=4,
                   help="request threads (more is slower under the GIL: bench/RESULTS.md)")
    p.add_argument("--seed", type=int, help="seed of the Thompson sampler")
    p.add_argument("--decision-log", metavar="FILE.jsonl",
                   help="append every decision and outcome here (for arbiter replay)")
    p.add_argument("--reward-wait", type=float, default=DEFAULT_REWARD_WAIT_SECONDS,
                   metavar="SECONDS",
                   help="an impression with no click or conversion after this long is "
                        "a negative example for the propensity models (default %(default)s)")
    add_snapshot_key_argument(p)
    p.add_argument("--access-log", action="store_true",
                   help="log one line per RPC: method, status, latency, decision id")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often to look for changed rule files (0: only on the "
                        "ReloadRuleset RPC)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.grpc import server

    if args.access_log:
        logging.getLogger("arbiter.access").setLevel(logging.INFO)
    from engine.reloader import RulesetReloader
    from engine.service import Arbiter

    ruleset = load_ruleset(args.rules, "serve")
    if ruleset is None:
        return 1
    for warning in ruleset.warnings:
        log.warning("%s", warning)
    decision_log: DecisionLog | None = None
    if args.decision_log:
        from adapters.decision_log import JsonlDecisionLog

        decision_log = JsonlDecisionLog(args.decision_log)
    arbiter = Arbiter(ruleset, open_store(args.redis), seed=args.seed,
                      reward_wait=args.reward_wait, decision_log=decision_log,
                      snapshot_key=snapshot_key(args))
    reloader = RulesetReloader(args.rules, arbiter)
    running = server.start(arbiter, args.host, args.port, args.workers, reloader,
                           args.reload_interval, args.metrics_port)
    print(f"arbiter: serving {args.rules} (revision {ruleset.revision}) on "
          f"{args.host}:{running.port} with {'redis' if args.redis else 'in-memory'} store",
          flush=True)
    server.serve_forever(running)
    return 0
