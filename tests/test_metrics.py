"""Prometheus metrics, scraped over HTTP from a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter
from tests.conftest import RETAIL, ROOT, free_port


def test_rpcs_decisions_and_state_are_scraped(retail: Ruleset) -> None:
    arbiter = Arbiter(retail, MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=4, metrics_port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            d = stub.Decide(pb.DecideRequest(user_id="u", placement="homepage_banner",
                                             channel="web"))
            stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                             action_id=d.actions[0].action_id,
                                             outcome=pb.OUTCOME_CLICK))
            with pytest.raises(grpc.RpcError):
                stub.Decide(pb.DecideRequest(user_id="u", placement="nowhere"))
            for n in range(12):  # item views: the recommender learns (and is measured)
                stub.TrackEvent(pb.TrackEventRequest(user_id=f"v{n % 3}", event_type="page_view",
                                                     item_id=f"sku-00{n % 4 + 1}"))
            pb_grpc.CatalogueServiceStub(channel).RemoveItems(
                pb.RemoveItemsRequest(item_ids=["sku-gone"]))
        arbiter.learn()
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        running.stop(grace=0.5)
    assert 'arbiter_rpc_total{code="OK",method="Decide"} 1.0' in text
    assert 'arbiter_rpc_total{code="INVALID_ARGUMENT",method="Decide"} 1.0' in text
    assert 'arbiter_rpc_total{code="OK",method="Feedback"} 1.0' in text
    assert 'arbiter_rpc_total{code="OK",method="RemoveItems"} 1.0' in text
    assert 'arbiter_rpc_seconds_bucket{le="0.5",method="Decide"} 2.0' in text
    top = d.actions[0]
    assert (f'arbiter_decisions_total{{action="{top.action_id}",arm="{top.arm}",'
            f'placement="homepage_banner"}} 1.0') in text
    assert f'arbiter_ruleset_info{{revision="{retail.revision}"}} 1.0' in text
    assert "arbiter_learning_lag_seconds" in text and "arbiter_reload_failures 0.0" in text
    assert 'arbiter_learnt_metric{metric="interactions",model="@recommender"} 12.0' in text
    assert "arbiter_catalogue_items 29.0" in text


def test_json_logs_with_an_access_line_per_rpc_and_no_user_ids() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--log-format", "json", "serve", "--rules",
         str(RETAIL), "--port", str(port), "--access-log"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.DecisionServiceStub(channel)
            d = stub.Decide(pb.DecideRequest(user_id="ann-private", placement="homepage_banner",
                                             channel="web"))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    access = [x for x in lines if x["logger"] == "arbiter.access"]
    assert {"rpc": "Decide", "code": "OK", "decision_id": d.decision_id}.items() <= (
        access[0].items())
    assert "ann-private" not in err


def test_a_feature_pooled_beyond_its_vocabulary_is_reported(tmp_path: Path) -> None:
    """A model whose one-hot feature reached its ``vocabulary:`` shows it: in the
    metrics (values admitted, per model and feature), in ``arbiter report --models``'s
    table, and nowhere for a model still below its limit."""
    import re
    import shutil

    from dsl.loader import load_path
    from engine.cli.commands.report import render_models

    rules = tmp_path / "rules"
    shutil.copytree(RETAIL, rules)
    (rules / "model.arb").write_text(
        "model on homepage_banner { per: placement  features: context.device\n"
        "  vocabulary: 2 }\n")  # one model, whichever action each decision shows
    arbiter = Arbiter(load_path(rules), MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=4, metrics_port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            for device in ("mobile", "desktop", "tablet", "tv") * 3:
                d = stub.Decide(pb.DecideRequest(
                    user_id="u", placement="homepage_banner", channel="web",
                    context={"device": pb.Value(string_value=device)}))
                stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                                 action_id=d.actions[0].action_id,
                                                 outcome=pb.OUTCOME_CLICK))
        arbiter.learn()
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        running.stop(grace=0.5)
    pooled = re.findall(r'arbiter_model_pooled_feature_values\{feature="context.device",'
                        r'model="([^"]+)"\} 2.0', text)
    assert pooled == ["@homepage_banner"], text
    quality = {q.model: q for q in arbiter.models.quality()}
    assert all(quality[m].pooled() == ["context.device"] for m in pooled)
    assert all(f'arbiter_model_auc{{model="{m}"}}' in text for m in pooled)
    table = render_models(list(quality.values()))
    assert "pooled beyond their vocabulary: context.device" in table
    below = [m for m, q in quality.items() if not q.pooled()]
    assert all("pooled" not in line for line in table.splitlines()
               if line.split(" ")[0] in below)
