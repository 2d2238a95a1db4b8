"""End to end over a real gRPC server on a free port, through the generated stubs."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.memory import MemoryStore
from dsl.ruleset import DEFAULT_MODEL, Ruleset
from engine.grpc import convert
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.server import RunningServer
from engine.service import Arbiter

Stub = pb_grpc.DecisionServiceStub


def num(x: float) -> pb.Value:
    return pb.Value(number_value=x)


def text(x: str) -> pb.Value:
    return pb.Value(string_value=x)


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def test_decide_returns_a_ranked_explained_decision(stub: Stub) -> None:
    response = stub.Decide(pb.DecideRequest(user_id="first-timer", placement="homepage_banner",
                                            channel="web", explain=True))
    assert len(response.decision_id) == 32
    assert len(response.ruleset_revision) == 12
    assert response.channel == "web"
    top = response.actions[0]
    assert (top.action_id, top.rank) == ("onboarding_tour", 1)
    assert top.score == pytest.approx(top.propensity * top.value * top.weight)
    assert top.content["cta"] == "Start the tour"
    assert any(r.kind == "eligibility" and r.passed for r in top.reasons)
    assert {t.name for t in top.score_terms} >= {"propensity", "value", "weight"}
    assert "new_visitor" in response.explanation.segments
    assert len(response.explanation.candidates) == 6


def test_track_event_makes_a_cart_abandoner_who_gets_the_cart_action(stub: Stub) -> None:
    before = stub.Decide(pb.DecideRequest(user_id="carla", placement="email"))
    assert "cart_reminder" not in [a.action_id for a in before.actions]
    assert before.channel == "email"  # the placement's only channel, the request named none
    added = convert.timestamp(time.time() - 26 * 3600)
    tracked = stub.TrackEvent(pb.TrackEventRequest(
        user_id="carla", event_type="add_to_cart", properties={"value": num(89.0)},
        traits={"first_name": text("Carla"), "email_opt_in": pb.Value(bool_value=True)},
        timestamp=added))
    assert tracked.profile.events[0].event_type == "add_to_cart"
    assert tracked.profile.events[0].total_value == 89.0
    after = stub.Decide(pb.DecideRequest(user_id="carla", placement="email"))
    assert after.actions[0].action_id == "cart_reminder"
    assert after.actions[0].content["subject"] == "Carla, you left something in your cart"


def test_feedback_moves_bandit_and_propensity(stub: Stub, running: RunningServer) -> None:
    arbiter = running.arbiter
    for _ in range(6):
        stub.TrackEvent(pb.TrackEventRequest(user_id="fiona", event_type="visit"))
    stub.TrackEvent(pb.TrackEventRequest(user_id="fiona", event_type="visit",
                                         timestamp=convert.timestamp(time.time() - 40 * 86400)))
    prior = arbiter.models.predict("new_arrivals", DEFAULT_MODEL, 0.05, {})
    clicked = 0
    for i in range(50):
        d = stub.Decide(pb.DecideRequest(user_id="fiona", placement="homepage_banner",
                                         channel="web"))
        top = d.actions[0]
        assert top.experiment == "hero_test"
        stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id=top.action_id,
                                         outcome=pb.OUTCOME_IMPRESSION))
        if top.action_id == "new_arrivals":
            clicked += 1
            reply = stub.Feedback(pb.FeedbackRequest(
                decision_id=d.decision_id, action_id=top.action_id,
                outcome=pb.OUTCOME_CLICK, idempotency_key=f"click-{i}"))
            assert not reply.duplicate
            # a retry with the same key is acknowledged and changes nothing
            again = stub.Feedback(pb.FeedbackRequest(
                decision_id=d.decision_id, action_id=top.action_id,
                outcome=pb.OUTCOME_CLICK, idempotency_key=f"click-{i}"))
            assert again.duplicate
    counts = arbiter.store.arm_counts("hero_test")
    assert counts["new_arrivals"].successes == clicked > 0
    assert sum(c.trials for c in counts.values()) == 50
    assert arbiter.models.predict("new_arrivals", DEFAULT_MODEL, 0.05, {}) > prior
    explained = stub.Decide(pb.DecideRequest(user_id="fiona", placement="homepage_banner",
                                             channel="web", explain=True))
    terms = {t.name: t.value for t in explained.actions[0].score_terms}
    assert "posterior_alpha" in terms and "posterior_beta" in terms


def test_feedback_for_unknown_decision_or_action_is_not_found(stub: Stub) -> None:
    code, details = code_of(lambda: stub.Feedback(pb.FeedbackRequest(
        decision_id="nope", action_id="x", outcome=pb.OUTCOME_CLICK)))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("decision_id")
    d = stub.Decide(pb.DecideRequest(user_id="u", placement="homepage_banner", channel="web"))
    code, details = code_of(lambda: stub.Feedback(pb.FeedbackRequest(
        decision_id=d.decision_id, action_id="vip_early_access", outcome=pb.OUTCOME_CLICK)))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("action_id")


@pytest.mark.parametrize(("request_", "field"), [
    (pb.DecideRequest(placement="email"), "user_id"),
    (pb.DecideRequest(user_id="u", placement="sidebar"), "placement"),
    (pb.DecideRequest(user_id="u", placement="email", channel="sms"), "channel"),
    (pb.DecideRequest(user_id="u", placement="email", context={"page": pb.Value()}),
     "context.page"),
    (pb.DecideRequest(user_id="u", placement="email", context={"page": num(3)}),
     "context.page"),
    (pb.DecideRequest(user_id="u", placement="email", context={"shoe_size": num(3)}),
     "context.shoe_size"),
    (pb.DecideRequest(user_id="u", placement="email",
                      context={f"k{i}": text("v") for i in range(100)}), "context"),
    (pb.DecideRequest(user_id="u", placement="email", context={"page": text("x" * 5000)}),
     "context.page"),
])
def test_bad_decide_requests_are_invalid_argument_naming_the_field(
        stub: Stub, request_: pb.DecideRequest, field: str) -> None:
    code, details = code_of(lambda: stub.Decide(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.split(":")[0] == field, details


def test_bad_feedback_and_track_requests(stub: Stub) -> None:
    code, details = code_of(lambda: stub.Feedback(pb.FeedbackRequest(decision_id="d",
                                                                      action_id="a")))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "outcome")
    code, details = code_of(lambda: stub.TrackEvent(pb.TrackEventRequest(user_id="t")))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "event_type")
    code, details = code_of(lambda: stub.TrackEvent(pb.TrackEventRequest(
        user_id="t", event_type="visit", traits={"first_name": num(1)})))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                             "traits.first_name")
    found = stub.GetProfile(pb.GetProfileRequest(user_id="t"))
    assert not found.found  # rejected requests left nothing behind


def test_oversized_request_is_rejected_and_server_keeps_serving(stub: Stub) -> None:
    code, _ = code_of(lambda: stub.Decide(pb.DecideRequest(
        user_id="u", placement="email", context={"page": text("x" * (2 << 20))})))
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert stub.Decide(pb.DecideRequest(user_id="u", placement="email")).decision_id


def test_list_traits_round_trip(stub: Stub) -> None:
    consents = pb.Value(string_list=pb.StringList(values=["email_marketing", "analytics"]))
    stub.TrackEvent(pb.TrackEventRequest(user_id="lists", event_type="visit",
                                         traits={"consents": consents}))
    got = stub.GetProfile(pb.GetProfileRequest(user_id="lists"))
    assert list(got.profile.attributes["consents"].string_list.values) == [
        "email_marketing", "analytics"]



NULL = pb.Value(null_value="NULL_VALUE")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_trait_set_to_null_is_removed_and_its_default_applies_again(
        retail: Ruleset, request: pytest.FixtureRequest, store: str) -> None:
    """A customer withdraws their e-mail address or a tier lapses: there was no way to
    remove a trait short of ForgetProfile (a Value with no kind is refused)."""
    from adapters.redis_store import RedisStore
    from engine.grpc import server

    backend = (MemoryStore() if store == "memory"
               else RedisStore(request.getfixturevalue("redis_url")))
    running = server.start(Arbiter(retail, backend, seed=1), "127.0.0.1", 0, workers=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            stub.TrackEvent(pb.TrackEventRequest(user_id="ann", event_type="visit", traits={
                "email": text("ann@example.com"), "tier": text("gold"),
                "consents": pb.Value(string_list=pb.StringList(values=["email_marketing"])),
                "first_name": text("Ann")}))
            def loyalty() -> list[str]:
                decision = stub.Decide(pb.DecideRequest(
                    user_id="ann", placement="cart_page", channel="web", explain=True))
                trace = next(c for c in decision.explanation.candidates
                             if c.action_id == "loyalty_points")
                return [r.detail for r in trace.reasons if r.name == "when"]

            assert [d.endswith('-> True') for d in loyalty()] == [True]
            stub.TrackEvent(pb.TrackEventRequest(
                user_id="ann", event_type="visit", event_id="withdrawn-1",
                traits={"email": NULL, "tier": NULL, "consents": NULL}))
            again = stub.TrackEvent(pb.TrackEventRequest(  # a retry: the same event
                user_id="ann", event_type="visit", event_id="withdrawn-1",
                traits={"email": NULL, "tier": NULL, "consents": NULL}))
            assert again.duplicate
            attributes = stub.GetProfile(pb.GetProfileRequest(user_id="ann")).profile.attributes
            assert set(attributes) == {"first_name"}
            assert [d.endswith('-> False') for d in loyalty()] == [True]
            for call, field in (
                    (lambda: stub.Decide(pb.DecideRequest(
                        user_id="ann", placement="email", context={"page": NULL})),
                     "context.page: null only removes a trait"),
                    (lambda: stub.TrackEvent(pb.TrackEventRequest(
                        user_id="ann", event_type="visit", properties={"value": NULL})),
                     "properties.value: null only removes a trait"),
                    (lambda: stub.TrackEvent(pb.TrackEventRequest(
                        user_id="ann", event_type="visit", traits={"nickname": NULL})),
                     "traits.nickname: is not declared"),
                    (lambda: stub.TrackEvent(pb.TrackEventRequest(  # a misspelt key
                        user_id="ann", event_type="visit", traits={"emial": text("a@b")})),
                     "traits.emial: is not declared in the ruleset's profile block; did you "
                     "mean 'email'?"),
                    (lambda: stub.Decide(pb.DecideRequest(
                        user_id="ann", placement="email", context={"devise": text("ios")})),
                     "context.devise: is not declared in the ruleset's context block; did you "
                     "mean 'device'?")):
                code, details = code_of(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, details
    finally:
        running.stop(grace=0.5)

def test_get_and_forget_profile(stub: Stub) -> None:
    stub.TrackEvent(pb.TrackEventRequest(user_id="gdpr", event_type="purchase",
                                         properties={"value": num(42)},
                                         traits={"email": text("g@example.com")}))
    d = stub.Decide(pb.DecideRequest(user_id="gdpr", placement="homepage_banner",
                                     channel="web"))
    stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                     action_id=d.actions[0].action_id,
                                     outcome=pb.OUTCOME_IMPRESSION))
    got = stub.GetProfile(pb.GetProfileRequest(user_id="gdpr"))
    assert got.found and got.profile.attributes["email"].string_value == "g@example.com"
    purchase = next(e for e in got.profile.events if e.event_type == "purchase")
    assert (purchase.count, purchase.count_7d, purchase.total_value) == (1, 1, 42.0)
    assert got.profile.contacts[0].impressions == 1
    forgotten = stub.ForgetProfile(pb.ForgetProfileRequest(user_id="gdpr"))
    assert forgotten.deleted == 2  # the profile and the decision
    assert not stub.GetProfile(pb.GetProfileRequest(user_id="gdpr")).found
    code, _ = code_of(lambda: stub.Feedback(pb.FeedbackRequest(
        decision_id=d.decision_id, action_id=d.actions[0].action_id,
        outcome=pb.OUTCOME_CLICK)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(running: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "arbiter.v1.DecisionService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "arbiter.v1.DecisionService" in names
        assert "grpc.health.v1.Health" in names


def test_invalid_argument_carries_a_bad_request_detail_naming_the_field(
        stub: pb_grpc.DecisionServiceStub) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as info:
        stub.Decide(pb.DecideRequest(user_id="u", placement="nowhere", channel="web"))
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert (err.details() or "").startswith("placement: unknown placement")  # type: ignore[attr-defined]
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "placement"


def test_a_request_whose_deadline_passed_in_the_queue_is_not_worked_on(
        retail: Ruleset) -> None:
    """One worker, busy; a second call's deadline expires while it waits: the server
    answers DEADLINE_EXCEEDED without deciding (no work for a client that has gone)."""
    import threading
    import time

    from engine.grpc import server as grpc_server

    arbiter = Arbiter(retail, MemoryStore(), seed=1)
    calls: list[str] = []
    real_decide = arbiter.decide_from

    def slow_decide(req: Any, *args: Any) -> Any:  # holds the event loop
        calls.append(req.user_id)
        if req.user_id == "slow":
            time.sleep(0.6)
        return real_decide(req, *args)

    arbiter.decide_from = slow_decide  # type: ignore[method-assign]
    running = grpc_server.start(arbiter, "127.0.0.1", 0, workers=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            busy = threading.Thread(target=lambda: stub.Decide(pb.DecideRequest(
                user_id="slow", placement="homepage_banner", channel="web"), timeout=5))
            busy.start()
            time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as err:
                stub.Decide(pb.DecideRequest(user_id="late", placement="homepage_banner",
                                             channel="web"), timeout=0.2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            busy.join()
            time.sleep(0.2)
    finally:
        running.stop(grace=0.5)
    assert calls == ["slow"]


def test_liveness_on_its_own_port_answers_while_every_worker_is_stuck(
        retail: Ruleset) -> None:
    import threading
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from engine.grpc import server as grpc_server

    arbiter = Arbiter(retail, MemoryStore(), seed=1)
    release = threading.Event()
    real_decide = arbiter.decide_from

    def stuck(*args: Any) -> Any:  # a decision that holds the event loop itself
        release.wait(10)
        return real_decide(*args)

    arbiter.decide_from = stuck  # type: ignore[method-assign]
    running = grpc_server.start(arbiter, "127.0.0.1", 0, workers=1, health_port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel, \
                grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe:
            stub = pb_grpc.DecisionServiceStub(channel)
            busy = threading.Thread(target=lambda: stub.Decide(pb.DecideRequest(
                user_id="u", placement="homepage_banner", channel="web"), timeout=15))
            busy.start()
            time.sleep(0.2)
            started = time.monotonic()
            status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=2)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < 1.0
            release.set()
            busy.join()
    finally:
        release.set()
        running.stop(grace=0.5)
