"""The findings of the hostile-input review (issue 13), each against a real server:
timestamps and numbers out of range, undecodable bytes, idempotency keys per decision."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.requests import InvalidArgument
from engine.service import Arbiter

BAD_TIMESTAMPS = [Timestamp(seconds=-62_135_596_801), Timestamp(seconds=253_402_300_800),
                  Timestamp(seconds=2**62), Timestamp(seconds=0, nanos=-1),
                  Timestamp(seconds=0, nanos=1_000_000_000)]
METHODS = [f"/arbiter.v1.DecisionService/{m}" for m in (
    "Decide", "DecideBatch", "Feedback", "TrackEvent", "GetProfile", "ForgetProfile")] + [
    "/arbiter.v1.AdminService/GetRuleset", "/arbiter.v1.AdminService/ReloadRuleset",
    "/arbiter.v1.ReportService/ExperimentReport", "/arbiter.v1.ReportService/ModelReport"]


@pytest.fixture(params=["memory", "redis"])
def channel(request: pytest.FixtureRequest, retail: Ruleset) -> Iterator[grpc.Channel]:
    store = (MemoryStore() if request.param == "memory"
             else RedisStore(request.getfixturevalue("redis_url"), cache_ttl=0))
    running = server.start(Arbiter(retail, store, seed=1), "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    running.stop(grace=0.2)


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.DecisionServiceStub:
    return pb_grpc.DecisionServiceStub(channel)


def status(call: object, request: object) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=10)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code(), err.details()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS, ids=str)
def test_a_timestamp_out_of_range_is_invalid_argument_naming_its_field(
        stub: pb_grpc.DecisionServiceStub, bad: Timestamp) -> None:
    value = pb.Value(timestamp_value=bad)
    cases = [
        (stub.Decide, pb.DecideRequest(user_id="u", placement="homepage_banner",
                                       channel="web", context={"page": value}), "context.page"),
        (stub.Decide, pb.DecideRequest(user_id="u", placement="homepage_banner",
                                       channel="web", at=bad), "at"),
        (stub.TrackEvent, pb.TrackEventRequest(user_id="u", event_type="visit",
                                               properties={"when": value}), "properties.when"),
        (stub.TrackEvent, pb.TrackEventRequest(user_id="u", event_type="visit",
                                               traits={"tier": value}), "traits.tier"),
        (stub.TrackEvent, pb.TrackEventRequest(user_id="u", event_type="visit",
                                               timestamp=bad), "timestamp"),
        (stub.Feedback, pb.FeedbackRequest(decision_id="d", action_id="a",
                                           outcome=pb.OUTCOME_CLICK, timestamp=bad),
         "timestamp"),
    ]
    for call, request, field in cases:
        code, details = status(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert details.startswith(f"{field}: ") and "0001-01-01" in details, details
    assert status(stub.GetProfile, pb.GetProfileRequest(user_id="u")) == (
        grpc.StatusCode.OK, "")  # nothing was stored by the rejected TrackEvents
    assert not stub.GetProfile(pb.GetProfileRequest(user_id="u")).found



def test_a_decision_centuries_ahead_is_refused_not_kept_for_centuries(
        stub: pb_grpc.DecisionServiceStub) -> None:
    """A decision's record and feedback window run from its own time (``at``): one at
    9999-12-31 (a client's bug) was accepted and its record kept for ~8,000 years. A send
    scheduled within a year is still decided for its time."""
    import time

    def decide(ahead_days: float) -> tuple[grpc.StatusCode, str]:
        at = Timestamp(seconds=int(time.time() + ahead_days * 86400))
        return status(stub.Decide, pb.DecideRequest(
            user_id="u", placement="homepage_banner", channel="web", at=at))

    assert decide(30) == (grpc.StatusCode.OK, "")
    for days in (400, 2_900_000):
        code, details = decide(days)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("at: is more than 366 days ahead"), details

@pytest.mark.parametrize(("value", "message"), [
    (pb.Value(number_value=float("nan")), "must be a finite number"),
    (pb.Value(number_value=float("-inf")), "must be a finite number"),
    (pb.Value(string_value="x" * 5000), "is longer than 4096 characters"),
    (pb.Value(string_list=pb.StringList(values=["x"] * 65)), "has more than 64 items"),
    (pb.Value(string_map=pb.StringMap(entries={str(i): "" for i in range(65)})),
     "has more than 64 entries"),
])
def test_every_kind_of_value_is_checked_once_at_the_boundary(
        stub: pb_grpc.DecisionServiceStub, value: pb.Value, message: str) -> None:
    code, details = status(stub.Decide, pb.DecideRequest(
        user_id="u", placement="cart_page", channel="web", context={"cart_value": value}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("context.cart_value")
    assert message in details, details
    code, details = status(stub.TrackEvent, pb.TrackEventRequest(
        user_id="u", event_type="visit", properties={str(i): pb.Value(bool_value=True)
                                                     for i in range(65)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "properties: has more than 64" in details


def test_garbage_bytes_get_invalid_argument_and_one_line_each_without_traceback(
        channel: grpc.Channel, stub: pb_grpc.DecisionServiceStub,
        caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(13)
    seen: dict[grpc.StatusCode, int] = {}
    with caplog.at_level(logging.INFO):
        for i in range(200):
            method = METHODS[i % len(METHODS)]
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            call = channel.unary_unary(method)
            code, _ = status(call, payload)
            seen[code] = seen.get(code, 0) + 1
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    assert not {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN} & set(seen), seen
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    undecodable = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(undecodable) <= len(METHODS), len(undecodable)  # throttled per method
    assert stub.Decide(pb.DecideRequest(user_id="u", placement="email"), timeout=5)


def test_idempotency_keys_belong_to_their_decision(stub: pb_grpc.DecisionServiceStub) -> None:
    def decide(user: str) -> pb.DecideResponse:
        return stub.Decide(pb.DecideRequest(user_id=user, placement="homepage_banner",
                                            channel="web"), timeout=5)

    a, b = decide("ann"), decide("bob")
    a_action, b_action = a.actions[0].action_id, b.actions[0].action_id

    def feedback(d: pb.DecideResponse, action: str, outcome: int, key: str = ""
                 ) -> tuple[grpc.StatusCode, str, bool]:
        try:
            reply = stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                                     action_id=action, outcome=outcome,
                                                     idempotency_key=key), timeout=5)
        except grpc.RpcError as err:
            return err.code(), err.details(), False  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, "", reply.duplicate

    # one client key (an order id) on two decisions of two users: both applied
    assert feedback(a, a_action, pb.OUTCOME_IMPRESSION, "order-1") == (
        grpc.StatusCode.OK, "", False)
    assert feedback(b, b_action, pb.OUTCOME_IMPRESSION, "order-1") == (
        grpc.StatusCode.OK, "", False)
    # a key shaped like B's default key, sent on A, cannot suppress B's genuine click
    assert feedback(a, a_action, pb.OUTCOME_CLICK, f"{b.decision_id}:{b_action}:click")[0] == (
        grpc.StatusCode.OK)
    assert feedback(b, b_action, pb.OUTCOME_CLICK) == (grpc.StatusCode.OK, "", False)
    # the same key for a different request on one decision: refused, never swallowed
    code, details, _ = feedback(a, a_action, pb.OUTCOME_CONVERSION, "order-1")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("idempotency_key: "), details
    # a true replay stays a duplicate
    assert feedback(b, b_action, pb.OUTCOME_IMPRESSION, "order-1") == (
        grpc.StatusCode.OK, "", True)
    # without a key, a second conversion with another value: the message names what the
    # client sent (it named an idempotency_key the client never sent)
    def conversion(value: float) -> tuple[grpc.StatusCode, str]:
        try:
            stub.Feedback(pb.FeedbackRequest(decision_id=b.decision_id, action_id=b_action,
                                             outcome=pb.OUTCOME_CONVERSION, value=value),
                          timeout=5)
        except grpc.RpcError as err:
            return err.code(), err.details()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, ""

    assert conversion(40.0) == (grpc.StatusCode.OK, "")
    code, details = conversion(55.0)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("value: a conversion of this action was already reported on "
                              "this decision with another value or item"), details


def test_the_last_representable_instant_is_accepted_exactly(
        stub: pb_grpc.DecisionServiceStub) -> None:
    """Found by the API fuzzer: 9999-12-31T23:59:59.99998Z rounded, as a float, into year
    10000 and answered INTERNAL."""
    last = pb.Value(timestamp_value=Timestamp(seconds=253_402_300_799, nanos=999_984_742))
    code, details = status(stub.TrackEvent, pb.TrackEventRequest(
        user_id="u", event_type="visit", properties={"when": last}))
    assert code == grpc.StatusCode.OK, details


def test_ids_that_are_not_unicode_text_are_refused_in_process(arbiter: Arbiter) -> None:
    """gRPC delivers only valid UTF-8, but the library is called in process too: a lone
    surrogate in an id is InvalidArgument naming the field, never an encoding crash in
    a store."""
    bad = "ann" + chr(0xD800)
    for call, field in (
            (lambda: arbiter.track(user_id=bad, event_type="visit"), "user_id"),
            (lambda: arbiter.track(user_id="ann", event_type="visit", event_id=bad),
             "event_id"),
            (lambda: arbiter.decide(user_id=bad, placement="email", channel="email"),
             "user_id"),
            (lambda: arbiter.feedback(decision_id="d", action_id="a", outcome="click",
                                      idempotency_key=bad), "idempotency_key")):
        with pytest.raises(InvalidArgument) as err:
            call()
        assert err.value.field == field
