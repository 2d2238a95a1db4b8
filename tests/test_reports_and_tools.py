"""Reports and tools say what is true: no data yet, undefined AUC, every field, names."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from dsl.ruleset import Ruleset
from engine.cli import main
from engine.cli.commands.report import render_models
from engine.cli.replay import _bootstrap
from engine.learning.quality import ModelQuality
from engine.service import Arbiter
from tests.conftest import RETAIL


def test_a_report_without_traffic_says_there_is_no_data(retail: Ruleset) -> None:
    report = Arbiter(retail, MemoryStore(), seed=1).experiment_report("hero_test")
    text = report.render()
    assert "best arm: none yet" in text and "P(best)" not in text.splitlines()[-1]



def test_an_arm_never_shown_is_not_called_best_on_its_prior(retail: Ruleset) -> None:
    """An arm that was never eligible leads on its prior (mean 0.5 against the shown
    arms' few percent): the report named it the best arm, P(best) 100%."""
    from engine.experiments.report import experiment_report
    from engine.records import ArmCounts

    experiment = retail.experiments["hero_test"]
    never, *shown = experiment.arms
    counts = {arm: ArmCounts(200.0, 4.0 + i) for i, arm in enumerate(shown)}
    report = experiment_report(experiment, counts, now=1_767_614_400.0)
    assert report.leading_arm.arm == never and report.best_arm == ""
    text = report.render()
    assert f"best arm: none yet ({never} leads on its prior alone" in text
    assert f"not shown yet: {never} (at the prior" in text
    counts[never] = ArmCounts(200.0, 3.0)
    report = experiment_report(experiment, counts, now=1_767_614_400.0)
    assert report.best_arm == shown[-1] and "not shown yet" not in report.render()

def test_a_model_that_saw_one_class_has_no_auc(retail: Ruleset) -> None:
    now = [1_767_614_400.0]
    arb = Arbiter(retail, MemoryStore(clock=lambda: now[0]), seed=1, clock=lambda: now[0],
                  reward_wait=60.0)
    for i in range(5):  # impressions, never a click: every final label is negative
        now[0] += 100.0
        d = arb.decide(user_id=f"u{i}", placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="impression")
    models = arb.model_report()
    assert models and any(q.observed_rate == 0.0 for q in models)
    assert all(math.isnan(q.rolling_auc) for q in models if q.observed_rate in (0.0, 1.0))
    text = render_models([ModelQuality("m", "logistic", 5, float("nan"), 0.1, 0.05, 0.0)])
    assert " n/a " in text and "-0.000" not in text



def test_a_model_awaiting_its_first_final_label_is_not_measured_yet(retail: Ruleset) -> None:
    """Before any shown action's final label (a click, or none within the reward wait),
    the report printed log loss 0.0000, mean p 0.0000 and rate 0.0000: perfect, and
    calibrated to a rate of 0, on no data at all. Now n/a until the first label."""
    now = [1_767_614_400.0]
    arb = Arbiter(retail, MemoryStore(clock=lambda: now[0]), seed=1, clock=lambda: now[0],
                  reward_wait=3600.0)
    shown = []
    for i in range(6):
        d = arb.decide(user_id=f"u{i}", placement="homepage_banner", channel="web")
        top = d.actions[0].action_id
        arb.feedback(decision_id=d.decision_id, action_id=top, outcome="impression")
        shown.append(top)
    arb.learn()
    waiting = {q.model: q for q in arb.model_report() if q.model in shown}
    assert waiting and all(q.examples > 0 for q in waiting.values())
    assert all(math.isnan(v) for q in waiting.values() for v in (
        q.rolling_auc, q.rolling_log_loss, q.mean_predicted, q.observed_rate))
    table = render_models(list(waiting.values()))
    assert "0.0000" not in table and table.splitlines()[1].split()[-4:] == ["n/a"] * 4
    now[0] += 7200.0  # past the reward wait: each impression's final label is "no click"
    late = arb.decide(user_id="late", placement="homepage_banner", channel="web")
    arb.feedback(decision_id=late.decision_id, action_id=late.actions[0].action_id,
                 outcome="impression")
    arb.learn()
    measured = {q.model: q for q in arb.model_report() if q.model in shown}
    assert all(q.observed_rate == 0.0 and q.mean_predicted > 0.0
               and not math.isnan(q.rolling_log_loss) for q in measured.values())

def test_report_json_has_every_field_and_counts_as_integers(
        redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "hero_test", "--redis", redis_url, "--rules", str(RETAIL),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    arm = out["experiment"]["arms"][0]
    assert arm["exposures"] == 0 and isinstance(arm["exposures"], int)
    assert "rewards" in arm and "probBest" in arm  # zero fields are not left out


def test_coverage_names_the_actions_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(RETAIL)]) == 0
    assert "actions never shown: content_digest" in capsys.readouterr().out


def test_explain_lists_only_the_segments_the_condition_reads() -> None:
    rs = load_text("""
profile { vip: bool = false }
placement p { channels: web }
segment a = profile.vip
segment b = not a
action x { placements: p  value: 1  when: profile.known and not b  unless: a }
""")
    d = Arbiter(rs, MemoryStore(), seed=1).decide(user_id="u", placement="p", explain=True)
    when = next(r for t in d.traces for r in t.reasons if r.name == "when")
    assert "[b=True]" in when.detail and "a=" not in when.detail


def test_the_replay_bootstrap_holds_a_bounded_amount_of_memory() -> None:
    n = 50_000  # resampling it all at once held 2,000 x n indices (800 MB)
    rewards = (np.random.default_rng(1).random(n) < 0.2).astype(float)
    tracemalloc.start()
    low, high = _bootstrap(rewards, np.ones(n), np.ones(n), seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert low < 0.2 < high and peak < 150e6


def test_replay_reads_the_log_as_a_stream_and_reports_progress(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["replay", str(missing), "--rules", str(RETAIL)]) == 2
    assert "no decision log" in capsys.readouterr().err
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"not": "a log entry"}\n{torn\n')
    assert main(["replay", str(damaged), "--rules", str(RETAIL)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("nothing to replay (reward: click)") and "nan" not in out
