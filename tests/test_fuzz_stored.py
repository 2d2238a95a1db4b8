"""Stored data that is damaged (truncated, overwritten, flipped bits) in Redis or in the
decision log: every request gets a declared answer (DATA_LOSS naming the field, or a
degraded decision), the learner steps over a bad log entry, a bad model snapshot is
rebuilt from the log, a damaged decision log reads as its good lines. Never a crash or
a crash loop. The normal test run tries a short derandomized sample; ``make fuzz`` more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from adapters.decision_log import JsonlDecisionLog, iter_log
from adapters.redis_store import RedisStore
from dsl.loader import load_path
from engine.cli.app import main
from engine.decide.contacts import contact_entries, last_contact, outcomes_within
from engine.feature_names import FeatureNameSets
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.profiles import record_contact, record_event
from engine.records import (
    RECORD_LAYOUTS,
    CorruptRecord,
    DecisionRecord,
    MissingFeatureNames,
    ShownAction,
    decode_decision,
    decode_profile,
    encode,
    encode_compact_decision,
    encode_decision,
)
from engine.service import Arbiter
from tests.conftest import RETAIL, RedisServer
from tests.fuzzing import fuzz_settings

FUZZ = fuzz_settings("ARBITER_FUZZ_STORED", 25)
DECLARED = {grpc.StatusCode.OK, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT}


class Damage:
    """How to damage stored bytes, drawn before the bytes are known (so the strategy does
    not depend on them): truncate, flip bits, append garbage, replace, or empty."""

    def __init__(self, kind: str, where: list[float], bits: list[int], junk: bytes) -> None:
        self.kind, self.where, self.bits, self.junk = kind, where, bits, junk

    def __call__(self, good: bytes) -> bytes:
        data = bytearray(good)
        if self.kind == "truncate":
            return bytes(data[: int(self.where[0] * len(data))])
        if self.kind == "flip" and data:
            for where, bit in zip(self.where, self.bits, strict=False):
                data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
            return bytes(data)
        if self.kind == "append":
            return bytes(data) + self.junk
        if self.kind == "empty":
            return b""
        return self.junk


DAMAGE = st.builds(Damage, st.sampled_from(["truncate", "flip", "append", "replace", "empty"]),
                   st.lists(st.floats(0, 0.999), min_size=1, max_size=4),
                   st.lists(st.integers(0, 7), min_size=1, max_size=4),
                   st.binary(min_size=1, max_size=48))


class Served:
    def __init__(self, url: str) -> None:
        self.arbiter = Arbiter(load_path(RETAIL), RedisStore(url, cache_ttl=0), seed=1)
        self.running = server.start(self.arbiter, "127.0.0.1", 0)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.redis = redis.Redis.from_url(url)


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[Served]:
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    s = Served(redis_server.url)
    yield s
    s.channel.close()
    s.running.stop(grace=0.2)
    s.redis.close()


def code_of(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=10)  # type: ignore[operator]
    except grpc.RpcError as err:
        assert err.code() in DECLARED, (err.code(), err.details())  # type: ignore[attr-defined]
        if err.code() == grpc.StatusCode.DATA_LOSS:  # type: ignore[attr-defined]
            assert err.details().split(":")[0] in ("user_id", "decision_id")  # type: ignore[attr-defined]
        return err.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@FUZZ
@given(profile_damage=DAMAGE, decision_damage=DAMAGE)
def test_a_damaged_profile_or_decision_gets_declared_answers_and_heals(
        served: Served, profile_damage: Damage, decision_damage: Damage) -> None:
    stub, r = served.stub, served.redis
    stub.TrackEvent(pb.TrackEventRequest(user_id="victim", event_type="visit"), timeout=5)
    decision = stub.Decide(pb.DecideRequest(user_id="victim", placement="homepage_banner",
                                            channel="web"), timeout=5)
    profile_key, decision_key = "arb:p:victim", f"arb:d:{decision.decision_id}"
    r.set(profile_key, profile_damage(r.get(profile_key) or b""))
    r.set(decision_key, decision_damage(r.get(decision_key) or b""))
    # Decide always answers (degraded when the profile does not decode)
    answer = stub.Decide(pb.DecideRequest(user_id="victim", placement="homepage_banner",
                                          channel="web"), timeout=5)
    assert answer.actions
    code_of(stub.GetProfile, pb.GetProfileRequest(user_id="victim"))
    code_of(stub.TrackEvent, pb.TrackEventRequest(user_id="victim", event_type="visit"))
    code_of(stub.Feedback, pb.FeedbackRequest(decision_id=decision.decision_id,
                                              action_id=decision.actions[0].action_id,
                                              outcome=pb.OUTCOME_CLICK))
    # ForgetProfile always works, and heals
    stub.ForgetProfile(pb.ForgetProfileRequest(user_id="victim"), timeout=5)
    assert code_of(stub.TrackEvent, pb.TrackEventRequest(user_id="victim",
                                                         event_type="visit")) == (
        grpc.StatusCode.OK)
    assert not stub.Decide(pb.DecideRequest(user_id="victim", placement="homepage_banner",
                                            channel="web"), timeout=5).degraded


@FUZZ
@given(garbage=st.binary(max_size=64))
def test_the_learner_steps_over_a_damaged_log_entry(served: Served, garbage: bytes) -> None:
    stub, arbiter = served.stub, served.arbiter
    served.redis.xadd("arb:learn", {"e": garbage})
    decision = stub.Decide(pb.DecideRequest(user_id="learner", placement="homepage_banner",
                                            channel="web"), timeout=5)
    stub.Feedback(pb.FeedbackRequest(decision_id=decision.decision_id,
                                     action_id=decision.actions[0].action_id,
                                     outcome=pb.OUTCOME_IMPRESSION), timeout=5)
    arbiter.learn()  # never raises; the good event after the bad one is applied
    assert arbiter.learner.offset == served.redis.xrevrange("arb:learn", count=1)[0][0].decode()


def test_a_damaged_model_snapshot_is_rebuilt_from_the_log_it_still_has(redis_url: str) -> None:
    key = b"k" * 32
    first = Arbiter(load_path(RETAIL), RedisStore(redis_url, cache_ttl=0), seed=1,
                    snapshot_key=key)
    for i in range(20):
        d = first.decide(user_id=f"s{i}", placement="homepage_banner", channel="web")
        first.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                       outcome="impression")
    first.learn()
    first.close()
    r = redis.Redis.from_url(redis_url)
    blob = r.hget("arb:models", "blob") or b""
    for bad in (blob[: len(blob) // 2], b"", b"\x80\x04garbage", blob[:-1] + b"\x00"):
        r.hset("arb:models", "blob", bad)
        second = Arbiter(load_path(RETAIL), RedisStore(redis_url, cache_ttl=0), seed=1,
                         snapshot_key=key)  # starts; relearns from what the log still holds
        assert second.learner.applied == r.xlen("arb:learn") > 0
        second.store.close()
    r.close()


@FUZZ
@given(lines=st.lists(st.one_of(
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['[]', '1', 'null', '{"kind": "decision"}', '{"kind": "outcome"}',
                     '{"kind": "decision", "decision_id": 7, "actions": "x"}', '{', '"']),
), max_size=8))
def test_a_damaged_decision_log_reads_as_its_good_lines(
        tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("dlog") / "decisions.jsonl"
    arbiter = Arbiter(load_path(RETAIL), __import__("adapters.memory").memory.MemoryStore(),
                      seed=1, decision_log=JsonlDecisionLog(path))
    for i in range(5):
        d = arbiter.decide(user_id=f"l{i}", placement="homepage_banner", channel="web")
        arbiter.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                         outcome="impression")
    arbiter.close()
    good = path.read_text().splitlines()
    mixed = []
    for i, line in enumerate(good):
        mixed.append(line)
        if i < len(lines):
            mixed.append(lines[i].replace("\n", " "))
    path.write_bytes("\n".join(mixed).encode("utf-8", errors="surrogateescape") + b"\n")
    entries = list(iter_log(path))
    assert [json.dumps(e, sort_keys=True) for e in entries] == [
        json.dumps(json.loads(line), sort_keys=True) for line in good]
    assert main(["replay", str(path), "--rules", str(RETAIL)]) == 0


@FUZZ
@given(layout=st.sampled_from(RECORD_LAYOUTS), damage=DAMAGE)
def test_a_damaged_record_in_either_layout_is_corrupt_never_a_crash(
        layout: str, damage: Damage) -> None:
    """A decision record stored compact (its names list by id), as an array or as a map
    (an earlier build's, or ``--record-layout array|map``), then damaged: it decodes as
    a record or raises CorruptRecord naming the field (or MissingFeatureNames for an id
    no list has: the store then finds none, a CorruptRecord), never another exception."""
    record = DecisionRecord(
        "d1", "ann", "home", "web", "r1", 1.0,
        [ShownAction("offer", 1, 0.5, 0.1, 5.0, "exp", "offer", reward="click",
                     items=["sku-1"])],
        features={"segment:vip": 1.0, "context.spend": 12.5}, outcomes={"offer": ["click"]})
    names = FeatureNameSets()
    data = encode_decision(record, layout)
    if layout == "compact":  # the second sighting of its names list refers to it
        encode_compact_decision(record, names)
        data, interned = encode_compact_decision(record, names)
        assert interned is not None
    try:
        decoded = decode_decision(damage(data), names=names)
    except CorruptRecord as err:
        assert err.field == "decision_id"
    except MissingFeatureNames:
        pass
    else:
        assert isinstance(decoded, DecisionRecord)


@FUZZ
@given(damage=DAMAGE)
def test_a_damaged_packed_profile_is_corrupt_or_reads_never_a_crash(damage: Damage) -> None:
    """A profile with packed event and contact histories, damaged: it decodes to a
    profile every contact policy and writer can read, or raises CorruptRecord (degraded,
    DATA_LOSS), never an exception inside a decision."""
    profile = None
    for k in range(6):
        profile = record_event(profile, "ann", "visit", 1.0, 100.0 + k, {})
        profile = record_contact(profile, "ann", "offer", ("impression", "click")[k % 2],
                                 100.0 + k, ("web", "email")[k % 3 == 0])
    assert profile is not None
    try:
        decoded = decode_profile(damage(encode(profile)))
    except CorruptRecord as err:
        assert err.field == "user_id"
        return
    for action_id, history in decoded.contacts.items():
        contact_entries(history)
        last_contact(decoded, action_id, "click")
        outcomes_within(decoded, (action_id,), 200.0, 150.0, "impression", "web")
        record_contact(decoded, "ann", action_id, "impression", 106.0, "web")
