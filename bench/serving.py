"""The serving goals of issue 10, each as a ratio to the health-Check floor in the same run.

    python -m bench.serving [--duration 5] [--users 5000] [--only NAME,...] [--pairs 1]

For every configuration it starts ``arbiter serve`` (a subprocess; for Redis a private
``redis-server`` with appendfsync always), seeds ``--users`` profiles, and runs the load
generator (its own process) on the health ``Check`` then on ``Decide`` (the RPC
columns; TrackEvent or Feedback where the configuration says), same concurrency and
channels. Configurations:

* ``memory`` / ``redis``: the three-placement mix at concurrency 32, one process;
* ``memory-c1`` / ``redis-c1``: the same at concurrency 1;
* ``memory-keyed`` / ``redis-keyed``: the mix, each Decide with its own ``request_id``
  (its answer kept: retry-safe), to read against ``memory`` / ``redis``;
* ``memory-logged``: ``memory`` with ``--decision-log`` (every decision a JSON line);
* ``redis-cluster``: the mix on a three-primary Redis Cluster (``redis+cluster://``), to
  read against ``redis``;
* ``homepage``: ``homepage_banner`` alone (experiment with exact logged probabilities);
* ``bagging``: ``homepage_banner`` alone with ``model on homepage_banner { bagging: 10 }``
  (the contextual path), to read against ``homepage``;
* ``homepage-trained`` / ``bagging-trained``: the same two after 3,000 decisions with
  impressions and clicks sent through the API and learnt (:func:`train`): each candidate
  is predicted by its action's model, as in production once feedback flows (the two
  above measure cold models, which a bag leaves after 20 examples per action);
* ``redis-p1-8ch`` / ``redis-p2-8ch``: one and two processes (``--processes``), eight
  client connections (the kernel spreads connections, not requests, over processes);
* ``redis-replicated``: the mix on Redis with a replica and ``--redis-replicas 1`` (every
  acknowledged write waited for by the replica), to read against ``redis``;
* ``memory-track``: TrackEvent in memory, to read against ``redis-track``;
* ``redis-track`` / ``redis-track-replicated``, ``redis-feedback`` /
  ``redis-feedback-replicated``: the write RPCs in place of Decide (item page views; clicks
  on decisions with 1,000 impressions awaiting a reward), without and with a replica and
  ``--redis-replicas 1``: what waiting for the replica costs each write;
* ``redis-track-p1-8ch`` / ``redis-track-p2-8ch``: TrackEvent with one and two processes
  (every process learns every event: does ingest scale?).

``--pairs N`` measures Check then Decide N times on the same server and shows the pair
with the median throughput ratio, and the range of all N ratios: on a machine whose
speed drifts (a shared VM), one pair can land anywhere in that range.

Prints a Markdown table; ``--json FILE`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis

from bench.load import ROOT, arbiter_server, loadgen, seed_profiles
from dsl.vocabulary import LEARNERS
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.gen.arbiter.v1 import report_pb2, report_pb2_grpc
from tests.redis_proc import ClusterTopology, RedisServer


@dataclass(frozen=True)
class Config:
    name: str
    store: str
    concurrency: int = 32
    placement: str = ""
    processes: int = 1
    channels: int = 1
    bagging: bool = False
    trained: bool = False
    replicas: int = 0  # a replica of the Redis primary, and --redis-replicas this
    rpc: str = "decide"  # what is measured against Check: decide, track or feedback
    decision_log: bool = False  # --decision-log to a file in the run's folder
    request_ids: bool = False  # each Decide with its own request_id (its answer kept)


CONFIGS = (
    Config("memory", "memory"),
    Config("redis", "redis"),
    Config("memory-c1", "memory", concurrency=1),
    Config("memory-logged", "memory", decision_log=True),
    Config("redis-c1", "redis", concurrency=1),
    Config("memory-keyed", "memory", request_ids=True),
    Config("redis-keyed", "redis", request_ids=True),
    Config("redis-cluster", "cluster"),
    Config("homepage", "memory", placement="homepage_banner"),
    Config("bagging", "memory", placement="homepage_banner", bagging=True),
    Config("homepage-trained", "memory", placement="homepage_banner", trained=True),
    Config("bagging-trained", "memory", placement="homepage_banner", bagging=True,
           trained=True),
    Config("redis-p1-8ch", "redis", processes=1, channels=8),
    Config("redis-p2-8ch", "redis", processes=2, channels=8),
    Config("redis-replicated", "redis", replicas=1),
    Config("memory-track", "memory", rpc="track"),
    Config("redis-track", "redis", rpc="track"),
    Config("redis-track-replicated", "redis", replicas=1, rpc="track"),
    Config("redis-feedback", "redis", rpc="feedback"),
    Config("redis-feedback-replicated", "redis", replicas=1, rpc="feedback"),
    Config("redis-track-p1-8ch", "redis", processes=1, channels=8, rpc="track"),
    Config("redis-track-p2-8ch", "redis", processes=2, channels=8, rpc="track"),
)


@contextmanager
def served(config: Config, tmp: Path) -> Iterator[tuple[str, int]]:
    rules = ROOT / "rulesets/retail"
    if config.bagging:
        rules = tmp / "rules"
        shutil.copytree(ROOT / "rulesets/retail", rules)
        (rules / "model.arb").write_text("model on homepage_banner { bagging: 10 }\n")
    extra: tuple[str, ...] = ("--processes", str(config.processes))
    if config.decision_log:
        extra += ("--decision-log", str(tmp / "decisions.jsonl"))
    if config.store == "memory":
        with arbiter_server(None, 4, rules=rules, extra=extra) as served_:
            yield served_
        return
    if config.store == "cluster":  # three primaries, appendfsync always as below
        topology = ClusterTopology(tmp / "cluster")
        topology.start()
        try:
            with arbiter_server(topology.url, 4, rules=rules, extra=extra) as served_:
                yield served_
        finally:
            topology.stop()
        return
    (tmp / "primary").mkdir()
    redis_ = RedisServer(tmp / "primary", "--repl-diskless-sync-delay", "0")
    redis_.start()
    replica = None
    if config.replicas:
        (tmp / "replica").mkdir()
        replica = RedisServer(tmp / "replica", "--replicaof", "127.0.0.1", str(redis_.port))
        replica.start()
        primary = redis.Redis(port=redis_.port)
        while primary.execute_command("WAIT", 1, 100) < 1:  # until the replica is in sync
            primary.set("bench:sync", 1)
        primary.close()
        extra += ("--redis-replicas", str(config.replicas))
    try:
        with arbiter_server(redis_.url, 4, rules=rules, extra=extra) as served_:
            yield served_
    finally:
        if replica is not None:
            replica.stop()
        redis_.stop()


def train(target: str, users: int, decisions: int = 3000) -> int:
    """``homepage_banner``'s models trained through the API, as ``bench.bagging_cost``
    trains them in process: a decision per customer in turn, an impression of its first
    action, a click on one in seven. Returns the propensity models' examples, once the
    learner has caught up (two model reports a second apart agree)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for i in range(decisions):
            d = stub.Decide(pb.DecideRequest(user_id=f"user-{i % users}",
                                             placement="homepage_banner", channel="web"))
            if not d.actions:
                continue
            top = d.actions[0].action_id
            stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id=top,
                                             outcome=pb.OUTCOME_IMPRESSION))
            if i % 7 == 0:
                stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id=top,
                                                 outcome=pb.OUTCOME_CLICK))
        reports = report_pb2_grpc.ReportServiceStub(channel)
        learnt, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = sum(m.examples for m in
                      reports.ModelReport(report_pb2.ModelReportRequest()).models
                      if m.learner.split()[0] in LEARNERS)
            if now == learnt and now > 0:
                break
            learnt = now
        return learnt


def measure(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    run = argparse.Namespace(concurrency=config.concurrency, duration=args.duration,
                             users=args.users)
    extra: tuple[str, ...] = ("--channels", str(config.channels), "--placement",
                              config.placement)
    if config.rpc == "feedback":
        extra += ("--pending", "1000")
    if config.request_ids:
        extra += ("--request-ids",)
    with tempfile.TemporaryDirectory() as tmp, served(config, Path(tmp)) as (target, pid):
        seed_profiles(target, args.users)
        learnt = train(target, args.users) if config.trained else 0
        pairs = [(loadgen(target, pid, "check", run, extra),
                  loadgen(target, pid, config.rpc, run, extra)) for _ in range(args.pairs)]
    # the pair with the median throughput ratio: each ratio compares two windows seconds
    # apart, so a machine that slows down for a while moves both sides of it
    ratios = sorted((d["rps"] / c["rps"], i) for i, (c, d) in enumerate(pairs))
    check, decide = pairs[ratios[len(ratios) // 2][1]]
    return {"config": config.name, "check": check, "decide": decide, "learnt": learnt,
            "rps_ratio": decide["rps"] / check["rps"],
            "p99_ratio": decide["p99_ms"] / check["p99_ms"],
            "rps_ratios": [round(r, 3) for r, _ in ratios],
            "errors": sum(c["errors"] + d["errors"] for c, d in pairs),
            "error_codes": _error_codes(pairs)}


def _error_codes(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, int]:
    """Every window's errors by RPC and code."""
    out: dict[str, int] = {}
    for windows in pairs:
        for rpc, window in zip(("check", "decide"), windows, strict=True):
            for code, count in window.get("error_codes", {}).items():
                out[f"{rpc} {code}"] = out.get(f"{rpc} {code}", 0) + count
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | floor req/s | floor p99 ms | RPC req/s | RPC p50 ms | "
             "RPC p99 ms | throughput ratio | p99 ratio | ratio range | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        c, d, spread = r["check"], r["decide"], r["rps_ratios"]
        lines.append(f"| {r['config']} | {c['rps']:.0f} | {c['p99_ms']:.2f} | {d['rps']:.0f} | "
                     f"{d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {r['rps_ratio']:.2f} | "
                     f"{r['p99_ratio']:.2f} | {spread[0]:.2f}-{spread[-1]:.2f} | "
                     f"{r['errors']} |")
    for r in rows:  # what the errors were, if any
        for error, count in r["error_codes"].items():
            lines.append(f"\n{r['config']}: {count} x {error}")
    by = {r["config"]: r for r in rows}
    if "homepage" in by and "bagging" in by:
        lines.append(f"\nbagging 10 / plain homepage_banner Decide throughput: "
                     f"{by['bagging']['decide']['rps'] / by['homepage']['decide']['rps']:.2f}")
    if "homepage-trained" in by and "bagging-trained" in by:
        plain, bagged = by["homepage-trained"], by["bagging-trained"]
        lines.append(f"bagging 10 / plain homepage_banner, trained models: "
                     f"{bagged['decide']['rps'] / plain['decide']['rps']:.2f} "
                     f"({plain['learnt']} and {bagged['learnt']} examples learnt)")
    for rpc, prefix in (("Decide", "redis"), ("TrackEvent", "redis-track")):
        if f"{prefix}-p1-8ch" in by and f"{prefix}-p2-8ch" in by:
            one, two = by[f"{prefix}-p1-8ch"], by[f"{prefix}-p2-8ch"]
            lines.append(f"two processes / one, {rpc} throughput: "
                         f"{two['decide']['rps'] / one['decide']['rps']:.2f}; floor: "
                         f"{two['check']['rps'] / one['check']['rps']:.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--only", default="", help="comma-separated configuration names")
    p.add_argument("--pairs", type=int, default=1,
                   help="Check-then-Decide windows per configuration; the table shows the "
                        "pair with the median throughput ratio and the range of all")
    p.add_argument("--json", help="write raw numbers here")
    args = p.parse_args()
    wanted = set(filter(None, args.only.split(",")))
    rows = [measure(c, args) for c in CONFIGS if not wanted or c.name in wanted]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
