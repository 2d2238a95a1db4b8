"""Learned segments: ``cluster NAME { features, k, names }``, learnt online from TrackEvents
through the log, read by rules as ``cluster.NAME``, reported with ``--clusters``."""

from __future__ import annotations

import random

import grpc
import pytest

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.diagnostics import RulesetError
from dsl.formatter import format_text
from dsl.loader import load_text
from engine.grpc import server
from engine.grpc.convert import quality_from_proto
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc
from engine.service import Arbiter

RULES = """
events: purchase, visit
cluster shoppers {
  features: basket = coalesce(sum(purchase.value) / count(purchase), 0),
            monthly = count(purchase, within=30d), visits = count(visit, within=30d)
  k: 3
  names: browser, regular, big
}
segment big_spender = cluster.shoppers == "big"
placement p { channels: web }
action thanks { placements: p  value: 1  when: big_spender }
"""
NOW = 1_780_000_000.0
DAYS = 90
# planted groups: (basket, purchases a month, visits a month)
GROUPS = ((10.0, 0.3, 20.0), (60.0, 2.0, 6.0), (220.0, 5.0, 12.0))
NAMES = ("browser", "regular", "big")


def _arbiter(store: object | None = None, rules: str = RULES, **kw: object) -> Arbiter:
    return Arbiter(load_text(rules), store or MemoryStore(clock=lambda: NOW),  # type: ignore[arg-type]
                   seed=1, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def planted_events(customers: int, seed: int = 1) -> tuple[list[tuple[float, str, str, float]],
                                                            dict[str, int]]:
    """Three planted groups behaving for DAYS days, in time order: (at, user, event, value)."""
    rng = random.Random(seed)
    truth = {f"c{c}": c % 3 for c in range(customers)}
    events = []
    for day in range(DAYS):
        for user, group in truth.items():
            basket, monthly, visits = GROUPS[group]
            at = NOW - (DAYS - day) * 86400 + rng.uniform(0, 80000)
            if rng.random() < visits / 30:
                events.append((at, user, "visit", 0.0))
            if rng.random() < monthly / 30:
                events.append((at + 60, user, "purchase", basket * rng.uniform(0.8, 1.2)))
    events.sort()
    return events, truth


def _populate(arb: Arbiter, customers: int = 150, seed: int = 1) -> dict[str, int]:
    events, truth = planted_events(customers, seed)
    for at, user, event, value in events:
        arb.track(user_id=user, event_type=event, at=at,
                  properties={"value": value} if value else {})
    arb.learn()
    return truth


def _errors(rules: str) -> list[str]:
    with pytest.raises(RulesetError) as err:
        load_text(rules, "c.arb")
    return [f"{d.pos.line}:{d.pos.column}: {d.message}" for d in err.value.diagnostics]


def test_a_cluster_block_formats_and_round_trips() -> None:
    text = format_text(RULES)
    assert "  k: 3\n  names: browser, regular, big\n" in text
    assert format_text(text) == text


@pytest.mark.parametrize(("rules", "expected"), [
    ("events: e\ncluster c { features: x = count(e)  k: 1 }",
     "2:37: k is the number of clusters"),
    ("events: e\ncluster c { features: x = count(e)  k: 2  names: a, b, c }",
     "2:43: 3 names for k: 2 clusters"),
    ("events: e\ncluster c { features: x = last(e) is null  k: 2 }",
     "2:27: a cluster feature is a number, not bool"),
    ("context { page: number }\ncluster c { features: x = context.page  k: 2 }",
     "2:27: a cluster feature reads the customer (profile, events), not context."),
    ("events: e\ncluster c { features: x = count(e), x = count(e)  k: 2 }",
     "2:37: feature 'x' is named twice"),
    ("events: e\ncluster c { features: x = count(e)  k: 2 }\nsegment s = cluster.d == 1",
     "3:13: unknown cluster 'd'"),
    ("events: e\ncluster c { features: x = count(e)  k: 2  names: a, b }\n"
     "segment s = cluster.c == 1", "3:23: cannot compare string with number"),
])
def test_cluster_mistakes_are_positioned(rules: str, expected: str) -> None:
    errors = _errors(rules)
    assert any(expected in e for e in errors), errors


def test_planted_clusters_are_recovered_and_rules_read_them() -> None:
    arb = _arbiter()
    truth = _populate(arb)
    spec = arb.ruleset.clusters["shoppers"]
    from engine.decide.clusters import features_of, profile_args

    def assigned(user: str) -> object:
        profile = arb.get_profile(user)
        assert profile is not None
        return arb.clusters.assign(spec, features_of(spec, profile_args(arb.ruleset, profile,
                                                                         NOW)))

    hits = sum(assigned(user) == NAMES[group] for user, group in truth.items())
    assert hits / len(truth) >= 0.9
    d = arb.decide(user_id="c2", placement="p", channel="web", explain=True)  # a big one
    assert [a.action_id for a in d.actions] == ["thanks"]
    assert "big_spender" in d.segments
    d = arb.decide(user_id="c0", placement="p", channel="web", explain=True)  # a browser
    assert d.actions == () and "big_spender" not in d.segments
    assert arb.decide(user_id="stranger", placement="p", channel="web").actions == ()


def test_before_the_clusters_are_seeded_no_one_is_in_one() -> None:
    arb = _arbiter()
    arb.track(user_id="first", event_type="purchase", properties={"value": 500.0},
              at=NOW - 86400)
    arb.learn()
    d = arb.decide(user_id="first", placement="p", channel="web", explain=True)
    assert d.actions == ()
    when = next(r for t in d.traces for r in t.reasons if r.name == "when")
    assert "big_spender=False" in when.detail


def test_report_shows_sizes_centres_and_silhouette_over_grpc() -> None:
    from engine.cli.commands.report import render_clusters

    arb = _arbiter()
    _populate(arb)
    running = server.start(arb, "127.0.0.1", 0, workers=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        models = [quality_from_proto(q) for q in rpb_grpc.ReportServiceStub(channel)
                  .ModelReport(rpb.ModelReportRequest()).models]
    finally:
        channel.close()
        running.stop(grace=0.5)
    row = next(q for q in models if q.model == "cluster:shoppers")
    assert row.metrics["silhouette"] > 0.5
    assert abs(sum(row.metrics[f"size:{i}"] for i in range(3)) - 1.0) < 1e-9
    assert row.metrics["centre:0:basket"] < 20 < 150 < row.metrics["centre:2:basket"]
    text = render_clusters(models)
    assert "shoppers  (KMeans k=3" in text and "basket" in text and "silhouette 0." in text


def test_clusters_survive_a_restart_and_a_changed_definition_relearns() -> None:
    store = MemoryStore(clock=lambda: NOW)
    arb = _arbiter(store, snapshot_key=b"k")
    _populate(arb)
    arb.learner.snapshot()
    again = _arbiter(store, snapshot_key=b"k")
    assert again.clusters.report(again.ruleset.clusters) == arb.clusters.report(
        arb.ruleset.clusters)
    changed = _arbiter(store, rules=RULES.replace("k: 3", "k: 2").replace(
        "names: browser, regular, big", "names: browser, big"), snapshot_key=b"k")
    assert changed.clusters.report(changed.ruleset.clusters) == []  # relearns from new events


def test_replicas_learn_the_same_clusters_from_the_log(redis_url: str) -> None:
    a = _arbiter(RedisStore(redis_url, cache_ttl=0))
    b = _arbiter(RedisStore(redis_url, cache_ttl=0))
    _populate(a, customers=90)
    b.sync()
    assert a.clusters.report(a.ruleset.clusters) == b.clusters.report(b.ruleset.clusters)


def test_report_clusters_command_prints_and_plots(tmp_path: object,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from engine.cli.app import main

    arb = _arbiter()
    _populate(arb, customers=90)
    running = server.start(arb, "127.0.0.1", 0, workers=2)
    png = Path(str(tmp_path)) / "clusters.png"
    nowhere = Path(str(tmp_path)) / "missing" / "clusters.png"
    target = f"127.0.0.1:{running.port}"
    try:
        code = main(["report", "--clusters", "--target", target, "--plot", str(png)])
        out = capsys.readouterr().out
        refused = main(["report", "--clusters", "--target", target, "--plot", str(nowhere)])
        err = capsys.readouterr().err  # (a traceback before)
    finally:
        running.stop(grace=0.5)
    assert code == 0 and "shoppers  (KMeans k=3" in out and "clusters plot written" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert refused == 2 and err == f"arbiter report: --plot {nowhere}: No such file or directory\n"


def test_the_fast_assignment_is_rivers_nearest_centre() -> None:
    arb = _arbiter()
    _populate(arb, customers=90)
    model = arb.clusters._models["shoppers"]
    rng = random.Random(5)
    for _ in range(300):
        x = {"basket": rng.uniform(0, 300), "monthly": rng.uniform(0, 8),
             "visits": rng.choice([None, rng.uniform(0, 25)])}
        river = model.order().index(model.kmeans.predict_one(model._scaled(x)))
        assert model.assign(x) == river


def test_features_may_be_written_without_names() -> None:
    text = """events: purchase
cluster c { features: count(purchase), x = sum(purchase.value) / count(purchase)  k: 2 }
"""
    rs = load_text(text)
    assert rs.clusters["c"].features == ("count(purchase)", "x")
    assert "features: count(purchase), x = sum(purchase.value) / count(purchase)" in \
        format_text(text)
