"""Prometheus metrics, scraped over HTTP from a real server."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter


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
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        running.stop(grace=0.5)
    assert 'arbiter_rpc_total{code="OK",method="Decide"} 1.0' in text
    assert 'arbiter_rpc_total{code="INVALID_ARGUMENT",method="Decide"} 1.0' in text
    assert 'arbiter_rpc_total{code="OK",method="Feedback"} 1.0' in text
    assert 'arbiter_rpc_seconds_bucket{le="0.5",method="Decide"} 2.0' in text
    top = d.actions[0]
    assert (f'arbiter_decisions_total{{action="{top.action_id}",arm="{top.arm}",'
            f'placement="homepage_banner"}} 1.0') in text
    assert f'arbiter_ruleset_info{{revision="{retail.revision}"}} 1.0' in text
    assert "arbiter_learning_lag_seconds" in text and "arbiter_reload_failures 0.0" in text
