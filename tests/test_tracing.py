"""OpenTelemetry traces: a server span per RPC (continuing the caller's trace), and inside
Decide the store calls and each decision stage, with no customer id anywhere."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter

sdk = pytest.importorskip("opentelemetry.sdk.trace")


def test_decide_is_traced_through_its_store_calls_and_stages(retail: Ruleset) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.grpc.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running = server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0,
                           tracing=Tracing(provider))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            decision = stub.Decide(
                pb.DecideRequest(user_id="secret-user-42", placement="homepage_banner",
                                 channel="web"), timeout=5,
                metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),))
            stub.Feedback(pb.FeedbackRequest(decision_id=decision.decision_id,
                                             action_id=decision.actions[0].action_id,
                                             outcome=pb.OUTCOME_CLICK), timeout=5)
            keyed = pb.DecideRequest(user_id="secret-user-42", placement="homepage_banner",
                                     channel="web", request_id="traced-1")
            first = stub.Decide(keyed, timeout=5)  # traced too, and kept
            assert stub.Decide(keyed, timeout=5).decision_id == first.decision_id
    finally:
        running.stop(grace=0.2)
    finished = exporter.get_finished_spans()
    assert sum(s.name == "decide" for s in finished) == 2  # (the replay decides nothing)
    spans: dict[str, Any] = {}
    for span in finished:  # each name's first: the first Decide's (children finish first)
        spans.setdefault(span.name, span)
    rpc = spans["/arbiter.v1.DecisionService/Decide"]
    assert f"{rpc.context.trace_id:032x}" == trace_id  # the caller's trace continues
    for name in ("store.profile_read", "decide", "store.record_write"):
        assert spans[name].parent.span_id == rpc.context.span_id, name
    for stage in ("segments", "scoring", "allocation", "ranking", "content"):
        assert spans[f"decide.{stage}"].parent.span_id == spans["decide"].context.span_id
    assert spans["decide"].attributes["arbiter.placement"] == "homepage_banner"
    assert spans["decide"].attributes["arbiter.actions"][0] == decision.actions[0].action_id
    assert "store.feedback" in spans
    text = repr([(s.name, dict(s.attributes or {})) for s in finished])
    assert "secret-user-42" not in text
