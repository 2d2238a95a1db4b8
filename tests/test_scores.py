"""Predictive scores: ``score NAME { label | target, features }`` learnt online with delayed
labels through the log, read as ``score.NAME``, shown by GetProfile, measured in reports."""

from __future__ import annotations

import random

import pytest

from adapters.memory import MemoryStore
from dsl.diagnostics import RulesetError
from dsl.formatter import format_text
from dsl.loader import load_text
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.learning.scores import MIN_LABELS
from engine.records import pseudonym
from engine.service import Arbiter

RULES = """
events: purchase, visit
score churn {
  label: no purchase within 30d
  features: recency = coalesce(days_since(last(purchase)), 365), visits = count(visit, within=30d)
}
score spend {
  target: sum(purchase.value) within 30d
  features: monthly = count(purchase, within=30d)
}
segment at_risk = score.churn > 0.5
placement p { channels: email }
action winback { placements: p  value: 1  when: at_risk }
"""
NOW = 1_780_000_000.0
DAYS = 150


def _arbiter(store: object | None = None, **kw: object) -> Arbiter:
    return Arbiter(load_text(RULES), store or MemoryStore(clock=lambda: NOW),  # type: ignore[arg-type]
                   seed=1, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def _simulate(arb: Arbiter, customers: int = 120, seed: int = 1) -> dict[str, bool]:
    """Loyal customers buy every few days; the others visit, buy rarely, and half of them
    stop buying altogether after day 60."""
    rng = random.Random(seed)
    loyal = {f"c{c}": rng.random() < 0.5 for c in range(customers)}
    events = []
    for day in range(DAYS):
        for user, is_loyal in loyal.items():
            stopped = not is_loyal and int(user[1:]) % 2 == 0 and day > 60
            rate = 0.0 if stopped else 6.0 if is_loyal else 0.8
            visits = 12.0 if is_loyal else 3.0
            at = NOW - (DAYS - day) * 86400 + rng.uniform(0, 80000)
            if rng.random() < visits / 30:
                events.append((at, user, "visit", 0.0))
            if rng.random() < rate / 30:
                events.append((at + 60, user, "purchase", rng.uniform(20, 100)))
    events.sort()
    for at, user, event, value in events:
        arb.track(user_id=user, event_type=event, at=at,
                  properties={"value": value} if value else {})
    arb.learn()
    return loyal


def test_a_score_formats_and_round_trips() -> None:
    text = format_text(RULES)
    assert "  label: no purchase within 30d\n" in text
    assert "  target: sum(purchase.value) within 30d\n" in text
    assert format_text(text) == text


@pytest.mark.parametrize(("rules", "expected"), [
    ("events: e\nscore s { features: x = count(e) }", "2:7: score 's' needs 'label:"),
    ("events: e\nscore s { label: no e within 7d  target: sum(e.value) within 7d "
     "features: x = count(e) }", "2:34: a score has a label"),
    ("events: e\nscore s { label: no purchase within 7d  features: x = count(e) }",
     "2:11: unknown event 'purchase'"),
    ("events: e\nscore s { label: e within 0d  features: x = count(e) }",
     "2:27: a score's window is 1s to 365d"),
    ("events: e\nscore s { label: e within 7d  features: x = last(e) }",
     "2:45: a score feature is a number, not timestamp"),
    ("events: e\nscore s { label: e within 7d  features: x = count(e) }\n"
     "segment t = score.z > 1", "3:13: unknown score 'z'"),
])
def test_score_mistakes_are_positioned(rules: str, expected: str) -> None:
    with pytest.raises(RulesetError) as err:
        load_text(rules, "s.arb")
    found = [f"{d.pos.line}:{d.pos.column}: {d.message}" for d in err.value.diagnostics]
    assert any(expected in e for e in found), found


def test_churn_and_spend_are_learnt_with_delayed_labels_and_rules_act_on_them() -> None:
    arb = _arbiter()
    before = arb.decide(user_id="c0", placement="p", channel="email", explain=True)
    assert before.actions == ()  # nothing learnt: score.churn is null, the rule does not hold
    _simulate(arb)
    report = {q.model: q for q in arb.model_report()}
    churn, spend = report["score:churn"], report["score:spend"]
    assert churn.examples >= MIN_LABELS and churn.rolling_auc > 0.8
    assert 0.0 < churn.observed_rate < 1.0
    assert abs(churn.mean_predicted - churn.observed_rate) < 0.15  # calibrated, roughly
    assert spend.metrics["mae"] < spend.metrics["mean_target"]  # better than predicting 0
    # c0 (index 0: even) stopped buying if not loyal; a loyal customer is not at risk
    values = {u: arb.learnt_values(arb.get_profile(u))["score.churn"]  # type: ignore[arg-type]
              for u in ("c0", "c1", "c2", "c3", "c4", "c5")}
    decided = {u: [a.action_id for a in arb.decide(user_id=u, placement="p",
                                                   channel="email").actions] for u in values}
    for user, value in values.items():
        assert (decided[user] == ["winback"]) == (value > 0.5)
    assert len(set(map(tuple, decided.values()))) == 2  # some are at risk, some are not


def test_get_profile_shows_the_scores_over_grpc() -> None:
    arb = _arbiter()
    _simulate(arb, customers=60)
    running = server.start(arb, "127.0.0.1", 0, workers=2)
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        found = pb_grpc.DecisionServiceStub(channel).GetProfile(
            pb.GetProfileRequest(user_id="c1"))
    finally:
        channel.close()
        running.stop(grace=0.5)
    learnt = dict(found.profile.learnt)
    assert set(learnt) == {"score.churn", "score.spend", "best_send_hour"}
    assert 0.0 <= learnt["score.churn"] <= 1.0 and learnt["score.spend"] >= 0.0


def test_forget_drops_the_waiting_snapshot_and_snapshots_restore_the_scores() -> None:
    store = MemoryStore(clock=lambda: NOW)
    arb = _arbiter(store, snapshot_key=b"k")
    _simulate(arb, customers=60)
    spec = arb.ruleset.scores["churn"]
    model = arb.scores._models["churn"]
    assert pseudonym("c1") in model.pending
    arb.forget("c1")
    arb.learn()
    assert pseudonym("c1") not in model.pending
    arb.learner.snapshot()
    again = _arbiter(store, snapshot_key=b"k")
    x = {"recency": 3.0, "visits": 10.0}
    assert again.scores.predict(spec, x) == pytest.approx(arb.scores.predict(spec, x))


def test_explain_learns_from_a_population_file_first(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from engine.cli.app import main
    from tests.conftest import RETAIL

    profile = Path(str(tmp_path)) / "bo.toml"
    profile.write_text("""traits = { email_opt_in = true }
events = [
  { type = "purchase", value = 60, ago = "140d" }, { type = "purchase", value = 55, ago = "120d" },
  { type = "purchase", value = 70, ago = "100d" }, { type = "purchase", value = 65, ago = "80d" },
  { type = "visit", ago = "40d" }, { type = "visit", ago = "20d" },
]
""")
    args = ["explain", str(RETAIL), "--user", "bo", "--placement", "email", "--profile",
            str(profile)]
    assert main(args) == 0
    assert "segments: (none)" in capsys.readouterr().out  # nothing learnt: no churn score
    population = str(RETAIL / "tests" / "population.jsonl")
    assert main([*args, "--population", population]) == 0
    out = capsys.readouterr().out
    assert "segments: churn_risk" in out and "1. winback_offer" in out


def test_the_fast_prediction_is_rivers_pipeline() -> None:
    arb = _arbiter()
    _simulate(arb, customers=60)
    rng = random.Random(3)
    for name in ("churn", "spend"):
        spec, model = arb.ruleset.scores[name], arb.scores._models[name]
        for i in range(100):
            x = {f: rng.uniform(0, 200) for f in spec.features}
            if i % 3 == 0:  # an unknown feature: River's pipeline leaves it out
                del x[spec.features[i % len(spec.features)]]
            values = [x.get(f) for f in spec.features]
            assert model.fast_predict(spec, model.fast(spec), values) == pytest.approx(
                model.predict(spec, x), abs=1e-9)


def test_check_states_what_the_ruleset_learns(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.app import main
    from tests.conftest import RETAIL

    assert main(["check", str(RETAIL)]) == 0
    out = capsys.readouterr().out
    assert "recommend() in complete_the_look, picked_for_you" in out
    assert "cluster shoppers: k=3 on basket, monthly, visits" in out
    assert "score churn: label no purchase within 60d from recency, orders, visits" in out


def test_a_snapshot_keeps_no_prediction_cache() -> None:
    """The fast path's parameters are a cache: not pickled, and one unpickled from an
    older snapshot (another shape) is dropped, so the first read rebuilds it."""
    import pickle

    arb = _arbiter()
    _simulate(arb, customers=60)
    spec, model = arb.ruleset.scores["churn"], arb.scores._models["churn"]
    values = [3.0, 2.0]
    before = arb.scores.predict_values(spec, values)
    assert model._fast is not None
    model._fast = (model.labels, 0.0, {"recency": (0.0, 1.0, 1.0)})  # an older shape
    restored = pickle.loads(pickle.dumps(model))
    assert restored._fast is None
    arb.scores._models["churn"] = restored
    assert arb.scores.predict_values(spec, values) == before


def test_waiting_snapshots_are_numbers_the_collector_stops_walking() -> None:
    """Up to 200,000 customers per score wait for their label: as objects, every full
    collection of the cyclic GC walked them all (a served process's pause grew with its
    customers); as tuples of numbers the collector drops them from its lists."""
    import gc

    arb = _arbiter()
    _simulate(arb, customers=60)
    waiting = list(arb.scores._models["churn"].pending.values())
    assert waiting and all(type(w) is tuple for w in waiting)
    gc.collect()  # the inner tuples; the outer ones at this pass or the next
    gc.collect()
    assert not any(gc.is_tracked(w) or gc.is_tracked(w[1]) for w in waiting)


def test_a_snapshot_from_before_converts_its_waiting_customers() -> None:
    """A model snapshot written by an earlier version kept each waiting customer as a
    ``_Pending`` object: it loads, its customers wait as they did and resolve the same."""
    import pickle

    from engine.learning.scores import _Pending

    arb = _arbiter()
    _simulate(arb, customers=60)
    model = arb.scores._models["churn"]
    names = model.key[0]
    now = dict(model.pending)
    model.pending = type(model.pending)(
        (user, _Pending(at, {n: v for n, v in zip(names, values, strict=True)
                             if v is not None}, base, total))
        for user, (at, values, base, total) in now.items())
    loaded = pickle.loads(pickle.dumps(arb.scores))
    assert loaded._models["churn"].pending == now
    assert list(loaded._models["churn"].pending) == list(now)  # the same order
