"""``arbiter serve``: serve a ruleset over gRPC until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from dsl.vocabulary import ATTRIBUTION_WINDOW_SECONDS, DEFAULT_REWARD_WAIT_SECONDS
from engine.cli.common import (
    add_snapshot_key_argument,
    default_rules,
    load_ruleset,
    open_store,
    snapshot_key,
)
from engine.cli.config import Layered, SettingsError, read_file, render
from engine.decision_log import DecisionLog
from engine.learning.log import LEARNING_MODES
from engine.ports import LEARNING_LOG_MAX_ENTRIES
from engine.profiles import PACKED, PROFILE_LAYOUTS
from engine.records import RECORD_LAYOUTS

log = logging.getLogger("arbiter")
LAYERED: Layered
"""The serve options, layered over the environment and a settings file (engine/cli/config)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a ruleset over gRPC")
    p.add_argument("--rules", default=default_rules(), help="ruleset directory or file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    p.add_argument("--redis", metavar="URL",
                   help="redis://host:port/db, redis+sentinel://host[:port][,...]/service[/db] "
                        "or redis+cluster://host[:port][,...]; rediss... over TLS "
                        "(default: in memory)")
    p.add_argument("--namespace", default="arb", metavar="NAME",
                   help="the prefix of every Redis key: one per deployment sharing a Redis "
                        "(on a Cluster each namespace is a slot of its own); default arb")
    p.add_argument("--redis-replicas", type=int, default=0, metavar="N",
                   help="acknowledge a write only once N replicas have it (Redis WAIT; "
                        "for a failover that loses nothing acknowledged); default 0: "
                        "once the primary has it")
    p.add_argument("--learning-log-max", type=int, default=LEARNING_LOG_MAX_ENTRIES,
                   metavar="N",
                   help="entries the Redis learning log keeps at most (0: no cap), however "
                        f"far behind a replica or the snapshot is (default "
                        f"{LEARNING_LOG_MAX_ENTRIES})")
    p.add_argument("--profile-layout", choices=PROFILE_LAYOUTS, default=PACKED,
                   help="how a profile's event history is written: packed (default: "
                        "float64s, decoded without an object per event), or pairs as "
                        "builds before session 17 read it, while a rolling upgrade from "
                        "one is under way (such a build takes a packed history for a "
                        "corrupt profile); both are read")
    p.add_argument("--record-layout", choices=RECORD_LAYOUTS, default="compact",
                   help="how Redis decision records are written: compact (default: a "
                        "features' names list that recurs stored once, by id), or array "
                        "(names in every record) as builds of sessions 13 and 14 read them, "
                        "or map as earlier builds do, while a rolling upgrade from one is "
                        "under way (all are read)")
    p.add_argument("--learners", choices=LEARNING_MODES, default="every",
                   help="every: each process learns from the learning log (default); one: "
                        "one process at a time (elected through the store) learns and "
                        "publishes its models every 5 s, the others load them (needs a "
                        "snapshot key): learning costs a process the same however many "
                        "processes and replicas there are")
    p.add_argument("--processes", type=int, default=0, metavar="N",
                   help="serving processes sharing the port (SO_REUSEPORT) under one "
                        "supervising parent; default 0: one per core with --redis, 1 with "
                        "the in-memory store (its state is per process)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=4,
                   help="threads for blocking store transactions (Feedback, TrackEvent, "
                        "reports); Decide runs on the event loop")
    p.add_argument("--default-deadline", type=float, default=10.0, metavar="SECONDS",
                   help="the deadline of a request whose client sent none")
    p.add_argument("--max-concurrent-rpcs", type=int, default=1000, metavar="N",
                   help="RPCs in progress at most per process; more are refused at once "
                        "with RESOURCE_EXHAUSTED (load shedding) instead of queueing")
    p.add_argument("--max-pending-rpcs", type=int, default=10_000, metavar="N",
                   help="calls received and waiting to start, at most per process (a "
                        "burst of connections); past it gRPC cancels new calls")
    p.add_argument("--max-connection-age", type=float, default=300.0, metavar="SECONDS",
                   help="close each client connection gracefully after about this long "
                        "(0: never), so clients reconnect and spread over processes and "
                        "replicas")
    p.add_argument("--seed", type=int, help="seed of the Thompson sampler")
    p.add_argument("--decision-log", metavar="FILE.jsonl",
                   help="append every decision and outcome here (for arbiter replay); "
                        "with --processes N, process i writes FILE.i.jsonl")
    p.add_argument("--decision-log-sample", type=float, default=1.0, metavar="SHARE",
                   help="log this share of decisions, with their outcomes (chosen by "
                        "decision id: replay estimates stay unbiased); default all")
    p.add_argument("--reward-wait", type=float, default=DEFAULT_REWARD_WAIT_SECONDS,
                   metavar="SECONDS",
                   help="an impression with no click or conversion after this long is "
                        f"a negative example for the propensity models (default "
                        f"{DEFAULT_REWARD_WAIT_SECONDS:g})")
    p.add_argument("--attribution-window", type=float, default=ATTRIBUTION_WINDOW_SECONDS,
                   metavar="SECONDS",
                   help="how long a decision takes feedback: its record is kept that long "
                        "(about 1.1 KB on Redis for a decision that showed something; "
                        f"default {ATTRIBUTION_WINDOW_SECONDS:g}, 7 days)")
    p.add_argument("--profile-retention", type=float, default=0.0, metavar="SECONDS",
                   help="delete a customer's profile this long after its last event or "
                        "feedback (Redis: the key's TTL; default 0: kept until "
                        "ForgetProfile)")
    add_snapshot_key_argument(p)
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--tokens-file", metavar="TOML",
                   help="bearer tokens and their scopes ([tokens] TOKEN = [scopes]); "
                        "default: $ARBITER_TOKENS (token=scope,scope;...); none: open")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per RPC: method, status, latency, decision id")
    p.add_argument("--otel-exporter", choices=("none", "console", "otlp"), default="none",
                   help="OpenTelemetry traces: otlp (endpoint from OTEL_EXPORTER_OTLP_*), "
                        "console, or none (default); needs the otel extra")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often to look for changed rule files (0: only on the "
                        "ReloadRuleset RPC)")
    p.add_argument("--health-port", type=int, metavar="PORT",
                   help="also serve the health service alone on this port, on its own "
                        "threads (probes never wait behind stuck requests)")
    p.add_argument("--pre-stop", type=float, default=0.0, metavar="SECONDS",
                   help="on SIGTERM, report NOT_SERVING this long before draining")
    p.add_argument("--drain", type=float, default=2.0, metavar="SECONDS",
                   help="on SIGTERM, let in-flight requests finish this long at most")
    p.add_argument("--config", metavar="TOML", default=os.environ.get("ARBITER_CONFIG"),
                   help="settings file (keys named like these flags); precedence: flags, "
                        "ARBITER_* variables, this file, defaults")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings and where each came from, then exit "
                        "(with status 2 and why, if serving would refuse them)")
    global LAYERED
    LAYERED = Layered(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.grpc import server

    try:  # every setting checked before anything is loaded or bound
        sources = LAYERED.resolve(args, os.environ, read_file(args.config))
        for unknown in LAYERED.unknown_variables(os.environ) if not args.reuse_port else ():
            log.warning("%s: ignored", unknown)  # (said once: not again by each child)
        if args.print_config:  # the settings, then whether serving would accept them
            print(render(args, LAYERED, sources))
            process_count(args)
            return 0
        credentials, tokens = security(args)
        key = snapshot_key(args)
        processes = process_count(args)
        if args.learners == "one" and key is None:
            raise ValueError("--learners one needs a snapshot key (ARBITER_SNAPSHOT_KEY or "
                             "--snapshot-key-file): the other processes load the "
                             "learner's signed snapshots")
        tracing = tracing_for(args) if processes == 1 else None
        if args.redis:
            from adapters.redis_store import check_namespace, check_server

            check_namespace(args.namespace)
            for warning in check_server(args.redis):  # a Cluster node is refused
                log.warning("%s", warning)
    except (SettingsError, ValueError, OSError, ImportError) as err:
        print(f"arbiter serve: {err}", file=sys.stderr)
        return 2
    if processes > 1:
        from engine.cli.supervisor import supervise

        return supervise(getattr(args, "argv", sys.argv[1:]), args, processes)

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

        decision_log = JsonlDecisionLog(args.decision_log, sample=args.decision_log_sample)
    arbiter = Arbiter(ruleset, open_store(args.redis, check=False,
                                          replicas=args.redis_replicas,
                                          log_max_entries=args.learning_log_max,
                                          profile_retention=args.profile_retention,
                                          record_layout=args.record_layout,
                                          namespace=args.namespace),
                      seed=args.seed,
                      reward_wait=args.reward_wait, decision_log=decision_log,
                      attribution_window=args.attribution_window,
                      snapshot_key=key, learners=args.learners,
                      profile_layout=args.profile_layout)
    reloader = RulesetReloader(args.rules, arbiter)
    try:
        running = server.start(arbiter, args.host, args.port, args.workers, reloader,
                               args.reload_interval, args.metrics_port, credentials, tokens,
                               health_port=args.health_port, reuse_port=args.reuse_port,
                               default_deadline=args.default_deadline, tracing=tracing,
                               max_concurrent_rpcs=args.max_concurrent_rpcs,
                               max_pending_rpcs=args.max_pending_rpcs,
                               max_connection_age=args.max_connection_age)
    except OSError as err:  # a port in use: one line, not a traceback
        print(f"arbiter serve: {err}", file=sys.stderr)
        arbiter.close()
        return 1
    print(f"arbiter: serving {args.rules} (revision {ruleset.revision}) on "
          f"{args.host}:{running.port} with {'redis' if args.redis else 'in-memory'} store",
          flush=True)
    server.serve_forever(running, args.drain, args.pre_stop)
    return 0


def tracing_for(args: argparse.Namespace) -> Any:
    """OpenTelemetry tracing as ``--otel-exporter`` asks (None: off)."""
    if args.otel_exporter == "none":
        return None
    from engine.grpc.tracing import tracing_from

    return tracing_from(args.otel_exporter)


MAX_RPC_BOUND = 1_000_000
"""The largest ``--max-concurrent-rpcs`` and ``--max-pending-rpcs``."""
MAX_WORKERS = 1024
"""The most ``--workers`` threads (each holds a store connection)."""
MAX_CONNECTION_AGE = 1_000_000
"""The longest ``--max-connection-age``, seconds (11.6 days; gRPC takes milliseconds as
a C int)."""


def process_count(args: argparse.Namespace) -> int:
    """``--processes``, or its default: one per core with Redis, one in memory."""
    if args.processes < 0:
        raise ValueError("--processes must be 0 (automatic) or more")
    processes = args.processes or ((os.cpu_count() or 1) if args.redis else 1)
    if processes > 1 and not args.redis:
        raise ValueError("--processes above 1 needs --redis: the in-memory store is "
                         "per process, so processes would not share profiles or learning")
    # (``not x > 0`` refuses NaN too, which every comparison answers False)
    if not 0 < args.decision_log_sample <= 1:
        raise ValueError("--decision-log-sample must be above 0 and at most 1, not "
                         f"{args.decision_log_sample}")
    if not 0 < args.default_deadline < math.inf:
        raise ValueError("--default-deadline must be above 0 and finite")
    for flag, port in (("--port", args.port), ("--metrics-port", args.metrics_port),
                       ("--health-port", args.health_port)):
        if port is not None and not 0 <= port <= 65535:  # (gRPC wraps a larger one)
            raise ValueError(f"{flag} must be 0 (a free one) to 65535, not {port}")
    # gRPC takes these as C ints (a larger one was an OverflowError at start)
    for flag, count in (("--max-concurrent-rpcs", args.max_concurrent_rpcs),
                        ("--max-pending-rpcs", args.max_pending_rpcs)):
        if not 1 <= count <= MAX_RPC_BOUND:
            raise ValueError(f"{flag} must be 1 or more, at most {MAX_RPC_BOUND:,}")
    if not 0 <= args.max_connection_age <= MAX_CONNECTION_AGE:  # NaN, inf refused too
        raise ValueError("--max-connection-age must be 0 (never) or more, at most "
                         f"{MAX_CONNECTION_AGE:,} seconds")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be 1 or more, at most {MAX_WORKERS:,}")
    for flag, seconds in (("--reload-interval", args.reload_interval),
                          ("--drain", args.drain), ("--pre-stop", args.pre_stop)):
        if not 0 <= seconds < math.inf:  # (a negative one was taken as 0, or ignored)
            raise ValueError(f"{flag} must be 0 or more seconds, and finite, not {seconds}")
    if not 0 < args.attribution_window < math.inf:
        raise ValueError("--attribution-window must be above 0 and finite")
    if not 0 <= args.profile_retention < math.inf:
        raise ValueError("--profile-retention must be 0 (for ever) or more, and finite")
    if not 0 <= args.reward_wait < math.inf:
        raise ValueError("--reward-wait must be 0 or more, and finite")
    if args.learning_log_max < 0:
        raise ValueError("--learning-log-max must be 0 (no cap) or more")
    if args.redis_replicas < 0 or (args.redis_replicas and not args.redis):
        raise ValueError("--redis-replicas must be 0 or more, and needs --redis")
    if args.learners not in LEARNING_MODES:  # (from the environment or a file)
        raise ValueError(f"--learners must be {' or '.join(LEARNING_MODES)}, "
                         f"not {args.learners!r}")
    if args.profile_layout not in PROFILE_LAYOUTS:  # (from the environment or a file)
        raise ValueError(f"--profile-layout must be {' or '.join(PROFILE_LAYOUTS)}, "
                         f"not {args.profile_layout!r}")
    if args.record_layout not in RECORD_LAYOUTS:  # (from the environment or a file)
        raise ValueError(f"--record-layout must be {' or '.join(RECORD_LAYOUTS)}, "
                         f"not {args.record_layout!r}")
    return processes


def security(args: argparse.Namespace) -> tuple[Any, Mapping[str, frozenset[str]] | None]:
    """TLS credentials and bearer tokens from the flags and the environment (a tokens
    file and the TLS files are read again when they change)."""
    from engine.grpc.security import TokensFile, parse_tokens, server_credentials

    credentials = None
    tokens: Mapping[str, frozenset[str]] | None = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tokens_file:
        tokens = TokensFile(args.tokens_file)  # (read again when it changes)
    elif os.environ.get("ARBITER_TOKENS"):
        tokens = parse_tokens(os.environ["ARBITER_TOKENS"])
    return credentials, tokens
