"""Compact decision records on a private redis-server: a features' names list that recurs
is stored once (``{ns}:fn:{id}``) and referred to by id; every process reads it, a lost
list is written again with the next record, a record whose list is gone is corrupt."""

from __future__ import annotations

import grpc
import msgspec
import pytest
import redis

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.records import CorruptRecord, decode_event
from engine.service import Arbiter


def stored(client: redis.Redis, decision_id: str) -> list[object]:
    data = client.get(f"arb:d:{decision_id}")
    assert data is not None
    fields = msgspec.msgpack.decode(data)
    assert isinstance(fields, list)
    return fields


def names_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match="arb:fn:*"))


def decide(arb: Arbiter, user: str) -> str:
    d = arb.decide(user_id=user, placement="homepage_banner", channel="web",
                   context={"device": "mobile"})
    assert d.actions, "a new visitor is shown the onboarding tour"
    return d.decision_id


def test_a_recurring_names_list_is_stored_once_and_read_by_another_process(
        redis_url: str, retail: Ruleset) -> None:
    client = redis.Redis.from_url(redis_url)
    writer = Arbiter(retail, RedisStore(redis_url), seed=1)
    first, second, third = (decide(writer, u) for u in ("ann", "bob", "cy"))
    # the first sighting spells its names out; then the list is referred to by its id
    assert isinstance(stored(client, first)[7], dict)
    (key,) = names_keys(client)
    for decision_id in (second, third):
        ref, values = stored(client, decision_id)[7]  # type: ignore[misc]
        assert key == b"arb:fn:" + ref.hex().encode() and len(values) > 3
    record_ttl = client.ttl(f"arb:d:{third}")
    assert client.ttl(key) >= record_ttl + 86_000  # outlives every record referring to it
    assert len(client.get(f"arb:d:{third}") or b"") < len(client.get(f"arb:d:{first}") or b"") / 2

    # another process, which never saw the list: reads it, and feedback keeps it compact
    reader = Arbiter(retail, RedisStore(redis_url), seed=2)
    record = reader.store.get_decision(second)
    assert record is not None
    assert record == writer.store.get_decision(second)
    assert record.features == writer.store.get_decision(first).features  # type: ignore[union-attr]
    assert record.features["context.device=mobile"] == 1.0
    action = record.actions[0].action_id
    assert not reader.feedback(decision_id=third, action_id=action, outcome="click").duplicate
    after = stored(client, third)
    assert isinstance(after[7], list) and after[8] == {action: ["impression", "click"]}
    entries = client.xrange("arb:learn")
    event = decode_event(entries[-1][1][b"e"])
    assert event is not None and event.features == record.features


def test_a_names_list_lost_from_redis_is_written_again_with_the_next_record(
        redis_url: str, retail: Ruleset) -> None:
    """Redis restarted empty, or the key was deleted: the process still holds the list,
    and the next record that refers to it writes it again (the script checks)."""
    client = redis.Redis.from_url(redis_url)
    writer = Arbiter(retail, RedisStore(redis_url), seed=1)
    decide(writer, "ann")
    decide(writer, "bob")
    (key,) = names_keys(client)
    client.flushall()
    later = decide(writer, "cy")
    assert names_keys(client) == [key] and isinstance(stored(client, later)[7], list)
    assert RedisStore(redis_url).get_decision(later) == writer.store.get_decision(later)


def test_a_record_whose_names_list_is_gone_or_damaged_is_corrupt(
        redis_url: str, retail: Ruleset) -> None:
    client = redis.Redis.from_url(redis_url)
    writer = Arbiter(retail, RedisStore(redis_url), seed=1)
    decide(writer, "ann")
    compact = decide(writer, "bob")
    (key,) = names_keys(client)
    good = client.get(key)
    client.delete(key)
    with pytest.raises(CorruptRecord, match=r"feature names \w+ are not stored"):
        RedisStore(redis_url).get_decision(compact)
    reader = Arbiter(retail, RedisStore(redis_url), seed=2)
    with pytest.raises(CorruptRecord):
        reader.feedback(decision_id=compact, action_id="x", outcome="click")
    client.set(key, msgspec.msgpack.encode(["segment:forged"]))
    with pytest.raises(CorruptRecord, match="do not match their id"):
        RedisStore(redis_url).get_decision(compact)
    client.set(key, good or b"")
    assert RedisStore(redis_url).get_decision(compact) is not None


def test_the_array_layout_spells_the_names_out_in_every_record(
        redis_url: str, retail: Ruleset) -> None:
    """``--record-layout array``: what builds of sessions 13 and 14 read, for a rolling
    upgrade from one."""
    client = redis.Redis.from_url(redis_url)
    writer = Arbiter(retail, RedisStore(redis_url, record_layout="array"), seed=1)
    ids = [decide(writer, u) for u in ("ann", "bob", "cy")]
    assert all(isinstance(stored(client, d)[7], dict) for d in ids) and not names_keys(client)
    newer = Arbiter(retail, RedisStore(redis_url), seed=2)
    record = newer.store.get_decision(ids[2])
    assert record is not None
    assert not newer.feedback(decision_id=ids[2], action_id=record.actions[0].action_id,
                              outcome="impression").duplicate
    assert isinstance(stored(client, ids[2])[7], dict)  # as the earlier build reads it


def test_served_records_refer_to_names_another_server_reads(redis_url: str,
                                                           retail: Ruleset) -> None:
    """Through the servers' shared round trips: one server decides, a second one (which
    never saw the list) takes the feedback; with the list gone, a third answers
    DATA_LOSS; the next decision on the first writes the list again."""
    client = redis.Redis.from_url(redis_url)
    servers = [server.start(Arbiter(retail, RedisStore(redis_url), seed=i), "127.0.0.1", 0)
               for i in range(3)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    writer, reader, late = (pb_grpc.DecisionServiceStub(c) for c in channels)
    try:
        def served_decide(user: str) -> pb.DecideResponse:
            return writer.Decide(pb.DecideRequest(
                user_id=user, placement="homepage_banner", channel="web",
                context={"device": pb.Value(string_value="mobile")}), timeout=5)

        decisions = [served_decide(f"u{i}") for i in range(4)]
        (key,) = names_keys(client)
        assert isinstance(stored(client, decisions[-1].decision_id)[7], list)
        d = decisions[2]
        reader.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                           action_id=d.actions[0].action_id,
                                           outcome=pb.OUTCOME_CLICK), timeout=5)
        assert stored(client, d.decision_id)[8] == {
            d.actions[0].action_id: ["impression", "click"]}
        client.delete(key)
        d = decisions[3]
        with pytest.raises(grpc.RpcError) as info:
            late.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                             action_id=d.actions[0].action_id,
                                             outcome=pb.OUTCOME_CLICK), timeout=5)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
        d = served_decide("u9")
        assert names_keys(client) == [key]
        late.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                         action_id=d.actions[0].action_id,
                                         outcome=pb.OUTCOME_CLICK), timeout=5)
    finally:
        for channel in channels:
            channel.close()
        for running in servers:
            running.stop(grace=0.5)


def test_the_names_cache_is_bounded_and_a_dropped_list_comes_back() -> None:
    """Many distinct lists (a context value unique per request) never grow a process's
    cache past its size; a list in use that was dropped is spelled out once, then has
    its id again (the same id: computed from its content)."""
    from engine.feature_names import FeatureNameSets

    sets = FeatureNameSets(size=8)
    hot = ("segment:vip", "context.device=mobile")
    sets.intern(hot)
    interned = sets.intern(hot)
    assert interned is not None
    for i in range(1000):
        unique = ("segment:vip", f"context.session=s{i}")
        sets.intern(unique)
        sets.intern(unique)
        assert len(sets) <= 8 and len(sets._ids) <= 8
    assert sets.names(interned[0]) is None
    assert sets.intern(hot) is None and sets.intern(hot) == interned


def test_the_memory_store_keeps_names_lists_as_long_as_their_records() -> None:
    """The in-memory store stores records compact too: a list lives until a day past the
    last record that refers to it (as on Redis), and is read back from its table when
    the bounded cache has dropped it."""
    from adapters.memory import NAMES_KEPT_BEYOND, MemoryStore
    from engine.feature_names import FeatureNameSets
    from engine.records import DecisionRecord, ShownAction

    now = [1_000_000.0]
    store = MemoryStore(clock=lambda: now[0])

    def record(decision_id: str) -> DecisionRecord:
        return DecisionRecord(decision_id, "ann", "home", "web", "r1", now[0],
                              [ShownAction("offer", 1, 0.5, 0.1, 5.0)],
                              {"segment:vip": 1.0, "context.device=mobile": 1.0})

    store.save_decision(record("d1"), 3600)
    store.save_decision(record("d2"), 3600)
    assert len(store._names) == 1 and isinstance(
        msgspec.msgpack.decode(store._decisions["d2"][0])[7], list)
    store.feature_names = FeatureNameSets()  # as if the cache had dropped the list
    assert store.get_decision("d2") == record("d2")
    now[0] += 3600 + NAMES_KEPT_BEYOND / 2  # the records have expired, the list not yet
    store.save_decision(DecisionRecord("d3", "bob", "home", "web", "r1", now[0], []), 60)
    assert len(store._names) == 1
    now[0] += NAMES_KEPT_BEYOND
    store.save_decision(DecisionRecord("d4", "bob", "home", "web", "r1", now[0], []), 60)
    assert store._names == {}


def test_the_names_cache_is_bounded_in_characters_too() -> None:
    """Long lists (a ruleset of hundreds of segments) fill the cache by their size, not
    their number: what it holds stays under its character budget."""
    from engine.feature_names import FeatureNameSets

    sets = FeatureNameSets(size=100, chars=1000)
    for i in range(50):
        long = tuple(f"segment:s{i}_{j:02d}" + "x" * 20 for j in range(10))  # ~330 chars
        sets.intern(long)
        assert sets.intern(long) is not None  # its id (then perhaps dropped for the next)
        assert sets._list_chars <= 1000 and sets._id_chars <= 1000
        assert len(sets) <= 3
