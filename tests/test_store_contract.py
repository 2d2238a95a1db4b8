"""The store contract: what every :class:`engine.ports.Store` must do, run over each store.

After River's ``check_estimator``: a new store is tested by adding it to ``HARNESSES``.
Each harness opens a store on an empty backing service, a second handle on the same
state (another replica), and a store whose backing service cannot be reached.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from engine.decide.contacts import contact_entries
from engine.feedback import ActionNotInDecision
from engine.ports import (
    DecisionNotFound,
    FeedbackEffects,
    ProfileChangedError,
    Store,
    StoreUnavailable,
)
from engine.profiles import record_contact, record_event
from engine.records import (
    ArmCounts,
    DecisionRecord,
    LearningEvent,
    Profile,
    ShownAction,
    pseudonym,
)
from tests.conftest import free_port

NOW = 1_767_614_400.0
TTL = 3600.0


@dataclass
class Harness:
    """How to open the store under test, a second handle on it, and an unreachable one."""

    open: Callable[[], Store]
    other: Callable[[], Store]  # another replica on the same state
    unreachable: Callable[[], Store] | None  # None: the store has no backing service
    staleness: float  # how late another handle may see a write (its cache TTL)


def _memory(request: pytest.FixtureRequest) -> Harness:
    store = MemoryStore(clock=lambda: NOW)
    return Harness(lambda: store, lambda: store, None, 0.0)


def _redis_stores(request: pytest.FixtureRequest, url: str, unreachable_url: str) -> Harness:
    """Redis stores on ``url`` (replicas see each other's writes within the cache TTL),
    and one on ``unreachable_url``; all closed after the test."""
    opened: list[RedisStore] = []

    def open_one(at: str = url, cache_ttl: float = 0.2) -> RedisStore:
        opened.append(RedisStore(at, cache_ttl=cache_ttl))
        return opened[-1]

    request.addfinalizer(lambda: [s.close() for s in opened])
    return Harness(open_one, open_one, lambda: open_one(unreachable_url, 0), 0.2)


def _redis(request: pytest.FixtureRequest) -> Harness:
    return _redis_stores(request, request.getfixturevalue("redis_url"),
                         f"redis://127.0.0.1:{free_port()}/0")


def _redis_sentinel(request: pytest.FixtureRequest) -> Harness:
    """The same Redis store, its primary found through a Sentinel (redis+sentinel://)."""
    topology = request.getfixturevalue("sentinel_topology")
    primary = redis.Redis(port=topology.primary_port())
    primary.flushall()
    primary.close()
    return _redis_stores(request, topology.url,
                         f"redis+sentinel://127.0.0.1:{free_port()}/arbiter/0")


def _redis_cluster(request: pytest.FixtureRequest) -> Harness:
    """The same Redis store on a Redis Cluster (redis+cluster://): every key of the
    namespace under one hash tag, on the primary that serves its slot."""
    return _redis_stores(request, request.getfixturevalue("cluster_url"),
                         f"redis+cluster://127.0.0.1:{free_port()}")


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {
    "memory": _memory,
    "redis": _redis,
    "redis-sentinel": _redis_sentinel,
    "redis-cluster": _redis_cluster,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param](request)


@pytest.fixture
def store(harness: Harness) -> Iterator[Store]:
    yield harness.open()


def _decision(decision_id: str = "d1", user: str = "u1") -> DecisionRecord:
    shown = ShownAction("offer", 1, 0.5, 0.1, 5.0, experiment="exp", arm="offer",
                        reward="click")
    return DecisionRecord(decision_id, user, "home", "web", "rev", NOW, [shown],
                          features={"segment:vip": 1.0})


def _effects(outcome: str, trials: float = 0.0, successes: float = 0.0
             ) -> Callable[[DecisionRecord, Profile | None], FeedbackEffects]:
    """A feedback change: record the outcome, count the arm, log a learning event."""

    def change(decision: DecisionRecord, profile: Profile | None) -> FeedbackEffects:
        decision.outcomes.setdefault("offer", []).append(outcome)
        profile = record_contact(profile, decision.user_id, "offer", outcome, NOW, "web")
        event = LearningEvent(decision.decision_id, "offer", outcome, NOW, NOW,
                              placement="home")
        increments = {("exp", "offer"): ArmCounts(trials, successes)}
        return FeedbackEffects(decision, profile, event, increments)

    return change


def _log(store: Store, n: int) -> None:
    for i in range(n):
        store.save_decision(_decision(f"d{i}"), TTL)
        store.commit_feedback(f"d{i}", f"k{i}", _effects("impression", trials=1.0), TTL)


# ---- profiles ------------------------------------------------------------------------
def test_a_profile_round_trips_and_a_store_sees_its_own_writes(store: Store) -> None:
    assert store.get_profile("u1") is None
    written = store.update_profile("u1", lambda p: record_event(p, "u1", "view", 2.0, NOW, {}))
    assert store.get_profile("u1") == written
    assert written.events["view"].count == 1


def test_concurrent_profile_updates_are_never_lost(store: Store) -> None:
    def work() -> None:
        for _ in range(25):
            store.update_profile("u1", lambda p: record_event(p, "u1", "view", 1.0, NOW, {}))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profile = store.get_profile("u1")
    assert profile is not None and profile.events["view"].count == 200


def test_another_replica_sees_a_write_within_the_cache_staleness(harness: Harness) -> None:
    reader, writer = harness.open(), harness.other()
    assert reader.get_profile("u1") is None  # may now be cached as missing
    writer.update_profile("u1", lambda p: record_event(p, "u1", "view", 1.0, NOW, {}))
    time.sleep(harness.staleness + 0.05)
    assert reader.get_profile("u1") is not None


def test_forget_deletes_the_profile_and_its_decisions(store: Store) -> None:
    store.update_profile("u1", lambda p: record_event(p, "u1", "view", 1.0, NOW, {}))
    store.save_decision(_decision("d1"), TTL)
    store.save_decision(_decision("d2"), TTL)
    assert store.forget("u1") == 3
    assert store.get_profile("u1") is None and store.get_decision("d1") is None
    assert store.forget("u1") == 0


# ---- decisions and feedback ----------------------------------------------------------------
def test_a_saved_decision_can_be_read_back(store: Store) -> None:
    store.save_decision(_decision(), TTL)
    assert store.get_decision("d1") == _decision()
    assert store.get_decision("nope") is None


def test_feedback_on_an_unknown_decision_is_not_found(store: Store) -> None:
    with pytest.raises(DecisionNotFound):
        store.commit_feedback("nope", "k", _effects("click"), TTL)


def test_feedback_is_applied_once_per_key_under_concurrency(harness: Harness) -> None:
    stores = [harness.open(), harness.other()]
    stores[0].save_decision(_decision(), TTL)
    results: list[bool] = []

    def send(i: int) -> None:
        commit = stores[i % 2].commit_feedback("d1", "key", _effects("click", 1.0, 1.0), TTL)
        results.append(commit.duplicate)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 15
    store = stores[0]
    record = store.get_decision("d1")
    assert record is not None and record.outcomes == {"offer": ["click"]}
    assert store.arm_counts("exp") == {"offer": ArmCounts(1.0, 1.0)}
    assert len(store.learning_events("", 100)) == 1
    profile = store.get_profile("u1")
    assert profile is not None and len(contact_entries(profile.contacts["offer"])) == 1


def test_a_record_saved_with_its_outcome_is_as_if_saved_then_given_feedback(
        store: Store) -> None:
    """``save_shown_decision`` (DecideBatch's ``record_impressions``): the record, its
    outcome, the arm, the learning event and the contact, and the key, which makes the
    same outcome again a duplicate; the record passed in is what is stored."""
    commit = store.save_shown_decision(_decision(), TTL, "key", _effects("impression", 1.0),
                                       "fp")
    assert not commit.duplicate and commit.effects is not None
    record = store.get_decision("d1")
    assert record is not None and record.outcomes == {"offer": ["impression"]}
    assert store.arm_counts("exp") == {"offer": ArmCounts(1.0, 0.0)}
    assert [e.outcome for _, e in store.learning_events("", 10) if e] == ["impression"]
    profile = store.get_profile("u1")
    assert profile is not None and len(contact_entries(profile.contacts["offer"])) == 1
    assert store.commit_feedback("d1", "key", _effects("impression", 1.0), TTL, "fp"
                                 ).duplicate
    assert not store.commit_feedback("d1", "k2", _effects("click", 0.0, 1.0), TTL).duplicate
    assert store.get_decision("d1").outcomes == {  # type: ignore[union-attr]
        "offer": ["impression", "click"]}
    assert store.forget("u1") >= 2  # the profile and the record
    assert store.get_decision("d1") is None


def test_a_send_is_stored_only_on_the_profile_it_was_decided_on(store: Store) -> None:
    """``save_shown_decision`` with ``compare``: when the customer's profile changed
    since the decision read it (another send or event), nothing is stored and
    ProfileChangedError carries the profile as it is now; on that one it is stored, the
    change made meanwhile kept."""
    as_read = store.profile_bytes("u1")  # (none yet)
    store.update_profile("u1", lambda p: record_event(p, "u1", "view", 1.0, NOW, {}))
    with pytest.raises(ProfileChangedError) as changed:
        store.save_shown_decision(_decision(), TTL, "key", _effects("impression", 1.0),
                                  "fp", as_read, compare=True)
    now = changed.value.changed.profile
    assert now is not None and now == store.profile_bytes("u1")
    assert store.get_decision("d1") is None and store.arm_counts("exp") == {}
    commit = store.save_shown_decision(_decision(), TTL, "key", _effects("impression", 1.0),
                                       "fp", now, compare=True)
    assert not commit.duplicate
    record = store.get_decision("d1")
    assert record is not None and record.outcomes == {"offer": ["impression"]}
    profile = store.get_profile("u1")
    assert profile is not None and profile.events["view"].count == 1
    assert len(contact_entries(profile.contacts["offer"])) == 1
    assert store.arm_counts("exp") == {"offer": ArmCounts(1.0, 0.0)}


def test_a_failed_change_stores_nothing_and_the_key_stays_free(store: Store) -> None:
    store.save_decision(_decision(), TTL)

    def failing(decision: DecisionRecord, profile: Profile | None) -> FeedbackEffects:
        raise ActionNotInDecision("other")

    with pytest.raises(ActionNotInDecision):
        store.commit_feedback("d1", "key", failing, TTL)
    assert store.arm_counts("exp") == {}
    assert store.learning_events("", 10) == []
    assert store.get_profile("u1") is None
    assert not store.commit_feedback("d1", "key", _effects("click"), TTL).duplicate


def test_arm_counts_add_up_per_counter_key(store: Store) -> None:
    store.save_decision(_decision(), TTL)
    store.commit_feedback("d1", "k1", _effects("impression", trials=1.0), TTL)
    store.commit_feedback("d1", "k2", _effects("click", successes=1.0), TTL)
    store.save_decision(_decision("d2"), TTL)
    store.commit_feedback("d2", "k3", _effects("impression", trials=1.0), TTL)
    assert store.arm_counts("exp") == {"offer": ArmCounts(2.0, 1.0, 0.0)}
    assert store.arm_counts("other") == {}


def test_a_changed_split_marks_each_arms_exposures_once(harness: Harness) -> None:
    """mark_split: a split never seen starts with no baseline; another split takes each
    arm's exposures as its baseline, once,
    whichever replica marks it; the same split marked again changes nothing."""
    store, replica = harness.open(), harness.open()
    assert store.split_mark("exp") is None
    store.mark_split("exp", "fifty-fifty")
    assert store.split_mark("exp") == ("fifty-fifty", {})
    store.save_decision(_decision(), TTL)
    store.commit_feedback("d1", "k1", _effects("impression", trials=1.0), TTL)
    store.mark_split("exp", "fifty-fifty")  # (a restart, another replica: the same split)
    assert replica.split_mark("exp") == ("fifty-fifty", {})
    replica.mark_split("exp", "twenty-eighty")
    store.mark_split("exp", "twenty-eighty")
    assert store.split_mark("exp") == ("twenty-eighty", {"offer": 1.0})
    assert store.split_mark("other") is None


def _later(store: Store, seconds: float) -> None:
    """Let ``seconds`` pass for the store: the in-memory store's clock moves on; Redis
    expires keys in its own time."""
    if isinstance(store, MemoryStore):
        now = store.clock() + seconds
        store.clock = lambda: now
    else:
        time.sleep(seconds)


def test_a_profile_unchanged_for_its_retention_is_gone(store: Store) -> None:
    """``profile_retention``: a customer with no event or feedback for that long is
    gone; any change keeps them that long again (Redis: the key's TTL)."""
    store.profile_retention = 1.0  # type: ignore[attr-defined]
    def view(user: str) -> Callable[[Profile | None], Profile]:
        return lambda p: record_event(p, user, "view", 1.0, NOW, {})

    store.update_profile("gone", view("gone"))
    store.update_profile("kept", view("kept"))
    store.save_decision(_decision("d1", user="fed"), TTL)
    store.commit_feedback("d1", "k1", _effects("impression", trials=1.0), TTL)
    assert store.get_profile("fed") is not None  # feedback made it (its contacts)
    _later(store, 0.6)
    store.update_profile("kept", view("kept"))  # changed again: kept anew
    _later(store, 0.6)
    assert store.get_profile("gone") is None and store.get_profile("fed") is None
    assert store.forget("gone") == 0  # nothing left to forget, as on Redis
    kept = store.get_profile("kept")
    assert kept is not None and kept.events["view"].count == 2
    store.profile_retention = 0.0  # type: ignore[attr-defined]
    store.update_profile("kept", view("kept"))  # for ever again
    _later(store, 1.2)
    assert store.get_profile("kept") is not None


# ---- the learning log ---------------------------------------------------------------------
def test_the_learning_log_is_read_in_order_after_an_offset(store: Store) -> None:
    _log(store, 5)
    events = store.learning_events("", 100)
    assert [e.decision_id for _, e in events] == [f"d{i}" for i in range(5)]
    offsets = [offset for offset, _ in events]
    assert [e.decision_id for _, e in store.learning_events(offsets[1], 2)] == ["d2", "d3"]
    assert store.learning_events(offsets[-1], 10) == []


def test_trimming_keeps_what_a_live_consumer_or_the_snapshot_still_needs(store: Store) -> None:
    _log(store, 6)
    offsets = [offset for offset, _ in store.learning_events("", 100)]
    store.trim_learning_log("slow", offsets[1])  # a replica that applied only two
    store.save_models(b"models", offsets[4])
    store.trim_learning_log("fast", offsets[4])
    assert [o for o, _ in store.learning_events(offsets[1], 100)] == offsets[2:]
    store.trim_learning_log("slow", offsets[4])  # now everyone is past the fourth
    assert [o for o, _ in store.learning_events(offsets[4], 100)] == offsets[5:]
    assert store.load_models() == (b"models", offsets[4])


def test_trimming_bounds_the_log(store: Store) -> None:
    """What everyone applied goes (Redis trims approximately, by whole stream nodes)."""
    _log(store, 250)
    offsets = [offset for offset, _ in store.learning_events("", 1000)]
    store.save_models(b"models", offsets[239])
    dropped = store.trim_learning_log("only", offsets[239])
    remaining = [o for o, _ in store.learning_events("", 1000)]
    assert dropped == 250 - len(remaining) and 100 <= dropped <= 240  # never past the offset
    assert remaining == offsets[-len(remaining):]


def test_the_log_keeps_at_most_its_cap_whatever_is_still_needed(store: Store) -> None:
    """No snapshot and a consumer that applied nothing: all is needed, yet the log keeps
    at most its cap (Redis: about, by whole stream nodes of 100), the newest entries."""
    store.log_max_entries = 100  # type: ignore[attr-defined]
    _log(store, 250)
    offsets = [offset for offset, _ in store.learning_events("", 1000)]
    dropped = store.trim_learning_log("behind", "")
    remaining = [o for o, _ in store.learning_events("", 1000)]
    assert dropped == 250 - len(remaining) and 100 <= len(remaining) <= 200
    assert remaining == offsets[-len(remaining):]


def test_models_snapshot_round_trips(store: Store) -> None:
    assert store.load_models() is None and store.models_offset() == ""
    store.save_models(b"\x00blob", "")
    assert store.load_models() == (b"\x00blob", "")
    store.save_models(b"\x01blob", "7-1")
    assert store.models_offset() == "7-1"


def test_the_learner_lease_has_one_holder_until_released_or_expired(store: Store) -> None:
    """``--learners one``: one holder renews; another gets it when it is released or
    left to expire."""
    assert store.hold_learner_lease("a", 5.0)
    assert store.hold_learner_lease("a", 5.0)  # renewed
    assert not store.hold_learner_lease("b", 5.0)
    store.release_learner_lease("b")  # not b's to release
    assert not store.hold_learner_lease("b", 5.0)
    store.release_learner_lease("a")
    assert store.hold_learner_lease("b", 0.3)
    assert not store.hold_learner_lease("a", 5.0)
    time.sleep(0.5)  # b stopped renewing
    assert store.hold_learner_lease("a", 5.0)


# ---- the backing service ------------------------------------------------------------------
def test_an_unreachable_store_says_so_quickly(harness: Harness) -> None:
    if harness.unreachable is None:
        pytest.skip("this store has no backing service")
    store = harness.unreachable()
    calls: list[Callable[[], Any]] = [
        lambda: store.get_profile("u1"),
        lambda: store.save_decision(_decision(), TTL),
        lambda: store.commit_feedback("d1", "k", _effects("click"), TTL),
        lambda: store.arm_counts("exp"),
        lambda: store.learning_events("", 10),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - started < 6.0


def test_forget_erases_the_users_learning_entries_and_feedback_keys(store: Store) -> None:
    store.save_decision(_decision("d1", "u1"), TTL)
    store.save_decision(_decision("d2", "u2"), TTL)
    store.commit_feedback("d1", "key-1", _effects("impression", trials=1.0), TTL)
    store.commit_feedback("d2", "key-2", _effects("impression", trials=1.0), TTL)
    store.commit_feedback("d1", "key-3", _effects("click", successes=1.0), TTL)
    offsets = [o for o, _ in store.learning_events("", 10)]
    store.forget("u1")
    remaining = store.learning_events("", 10)
    # u2's entry stays; a marker tells the recommender to drop u1 (by pseudonym only)
    assert [(e.decision_id, e.outcome) for _, e in remaining] == [("d2", "impression"),
                                                                   ("", "forget")]
    marker = remaining[1][1]
    assert marker is not None and marker.user == pseudonym("u1") and "u1" not in str(marker)
    assert store.learning_events(offsets[0], 10) == remaining  # offsets still valid
    store.save_decision(_decision("d1", "u1"), TTL)  # the user comes back: keys are free
    assert not store.commit_feedback("d1", "key-1", _effects("impression"), TTL).duplicate
    assert store.arm_counts("exp") != {}  # aggregates stay: they hold no one


def test_a_key_replayed_with_another_request_is_refused_not_swallowed(store: Store) -> None:
    from engine.ports import IdempotencyKeyReused

    store.save_decision(_decision("d1"), TTL)
    assert not store.commit_feedback("d1", "key", _effects("click"), TTL, "click|a").duplicate
    assert store.commit_feedback("d1", "key", _effects("click"), TTL, "click|a").duplicate
    with pytest.raises(IdempotencyKeyReused):
        store.commit_feedback("d1", "key", _effects("click"), TTL, "conversion|a")
    assert len(store.learning_events("", 10)) == 1  # the refused one changed nothing


def test_shared_counters_add_up_across_replicas(harness: Harness) -> None:
    one, other = harness.open(), harness.other()
    assert one.add_counters("c", {}) == {}
    assert one.add_counters("c", {"3": 1.0, "7": 2.0}) == {"3": 1.0, "7": 2.0}
    assert other.add_counters("c", {"3": 0.5}) == {"3": 1.5, "7": 2.0}
    assert one.add_counters("d", {}) == {}  # counters are per name


def test_catalogue_changes_come_since_a_version(store: Store) -> None:
    assert store.catalogue_changes(0) == (0, None, frozenset(), False)
    v1 = store.change_items({"a": b"A", "b": b"B"}, ())
    v2 = store.change_items({"c": b"C"}, ["a"])
    assert v2 > v1
    assert store.catalogue_changes(v2) == (v2, None, frozenset(), False)  # current
    assert store.catalogue_changes(v1) == (v2, {"c": b"C", "a": b""}, {"c"}, False)
    assert store.catalogue_changes(0) == (v2, {"a": b"", "b": b"B", "c": b"C"}, frozenset(),
                                          True)  # everything


def test_a_catalogue_removal_is_kept_for_so_many_versions_then_read_as_everything(
        store: Store) -> None:
    """A removed item's mark is kept for ``removals_kept`` versions (a replica that had
    the item reads that it is gone), then deleted, so that the marks do not grow with
    every item ever removed; a replica behind a deleted mark reads everything (without
    the item), one after it reads only what changed."""
    store.removals_kept = 2  # type: ignore[attr-defined]
    v1 = store.change_items({"a": b"A", "b": b"B", "c": b"C"}, ())
    v2 = store.change_items({}, ["a"])
    assert store.catalogue_changes(v1).items == {"a": b""}
    v3 = store.change_items({"b": b"B2"}, ())
    assert store.catalogue_changes(v1).items == {"a": b"", "b": b"B2"}  # (kept: 2 versions)
    v4 = store.change_items({"c": b"C2"}, ["b"])  # (a's mark, 2 versions old, deleted)
    assert store.catalogue_changes(0).items == {"b": b"", "c": b"C2"}
    assert store.catalogue_changes(v1) == (v4, {"b": b"", "c": b"C2"}, frozenset(), True)
    assert store.catalogue_changes(v2) == (v4, {"b": b"", "c": b"C2"}, frozenset(), False)
    assert store.catalogue_changes(v3) == (v4, {"c": b"C2", "b": b""}, frozenset(), False)
    v5 = store.change_items({"a": b"A2"}, ())  # (back: added again, marks as before)
    assert store.catalogue_changes(v4) == (v5, {"a": b"A2"}, {"a"}, False)
    store.change_items({"f": b"F"}, ())  # (an item the ruleset's file has: its removal
    store.change_items({}, ["f"], lasting={"f"})  # is kept for good)
    for _ in range(3):
        store.change_items({"c": b"C3"}, ())
    assert store.catalogue_changes(0).items == {"a": b"A2", "c": b"C3", "f": b""}


def test_catalogue_changes_come_in_the_order_items_were_last_added(store: Store) -> None:
    """The items present in the catalogue's order, the same for a replica that reads
    everything and one that reads what changed: by the version of the change that last
    added each (a replaced item keeps its place; one removed and added again goes last),
    then by id; and which were added, or added again, since the version asked about."""
    v1 = store.change_items({"m": b"1", "c": b"1", "x": b"1"}, ())  # (one change: by id)
    v2 = store.change_items({"b": b"1"}, ())
    v3 = store.change_items({"c": b"2"}, ["x"])  # c replaced in place, x removed
    v4 = store.change_items({"x": b"2", "a": b"1"}, ())  # x back: after b, with a, by id
    everything = store.catalogue_changes(0).items
    assert everything is not None
    assert [k for k, v in everything.items() if v] == ["c", "m", "b", "a", "x"]
    since_v1 = store.catalogue_changes(v1)
    assert since_v1.items is not None and since_v1.added == {"b", "a", "x"}
    assert [k for k, v in since_v1.items.items() if k in since_v1.added] == ["b", "a", "x"]
    since_v3 = store.catalogue_changes(v3)
    assert since_v3 == (v4, {"a": b"1", "x": b"2"}, {"a", "x"}, False)
    assert list(since_v3.items or ()) == ["a", "x"]
    assert store.catalogue_changes(v2).added == {"a", "x"}  # (x removed after v2, back)


def test_the_memory_store_drops_what_expired_as_it_goes_and_keeps_its_indexes() -> None:
    """Expiry as Redis TTLs: what passed its time is gone, the per-customer indexes
    follow, a key used again after expiring is new, and the store holds only what is
    live however long it runs (no periodic scan of everything)."""
    clock = [NOW]
    store = MemoryStore(clock=lambda: clock[0])
    for i in range(3000):
        clock[0] = NOW + i
        store.save_decision(_decision(f"d{i}", user=f"u{i % 7}"), 100.0)
        store.commit_feedback(f"d{i}", f"k{i % 500}", _effects("impression"), 50.0)
    assert store.get_decision("d2898") is None and store.get_decision("d2950") is not None
    # only what lives (a key as long as its decision)
    assert len(store._decisions) <= 101 and len(store._keys) <= 101
    assert sum(map(len, store._user_decisions.values())) == len(store._decisions)
    assert sum(map(len, store._user_keys.values())) == len(store._keys)
    assert len(store._expiries) <= 101 + 101 + len(store._names)  # one per names list
    store.forget("u3")  # forgotten entries are skipped when their time comes
    clock[0] += 1000
    store.save_decision(_decision("late", user="u1"), 100.0)
    assert set(store._decisions) == {"late"} and store._keys == {}
    assert store._user_decisions == {"u1": {"late": None}} and store._user_keys == {}


def test_the_memory_store_forgets_trimmed_log_positions_of_customers_gone_quiet() -> None:
    """A customer's index of log entries follows the log's trimming, so a long-running
    store keeps nothing for entries every consumer has applied."""
    store = MemoryStore(clock=lambda: NOW)
    for i in range(300):
        store.save_decision(_decision(f"d{i}", user=f"u{i % 30}"), TTL)
        store.commit_feedback(f"d{i}", f"k{i}", _effects("impression"), TTL)
    def positions() -> list[int]:  # (each customer's, packed in a bytearray)
        return sorted(p for packed in store._user_log.values() for p in array("q", packed))

    assert positions() == list(range(300))
    store.save_models(b"snapshot", "300")  # (nothing is trimmed past the snapshot)
    store.trim_learning_log("learner", "200")
    assert positions() == list(range(200, 300))
    store.trim_learning_log("learner", "300")
    assert store._user_log == {} and store._log_owners == []
    store.forget("u1")  # nothing of theirs is left to erase; a marker for the recommender
    assert len(store.learning_events("300", 10)) == 1


def test_a_customers_redis_indexes_hold_what_lives_not_their_whole_history(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-customer indexes ForgetProfile reads keep the decisions and keys that have
    not expired and the log entries the log still holds: an active customer's indexes
    do not grow with their history (they did as plain sets)."""
    import redis

    from adapters import redis_store

    monkeypatch.setattr(redis_store, "CLOCK_SKEW_SECONDS", 0.0)
    store = RedisStore(redis_url, cache_ttl=0)
    raw = redis.Redis.from_url(redis_url)
    try:
        for i in range(20):
            store.save_decision(_decision(f"old{i}", user="ann"), 1)
            store.commit_feedback(f"old{i}", f"k{i}", _effects("impression"), 1)
        assert raw.zcard("arb:udz:ann") == 20 and raw.zcard("arb:ukz:ann") == 20
        time.sleep(2.1)  # the decisions and keys expire
        store.save_decision(_decision("new", user="ann"), 100)
        store.commit_feedback("new", "fresh", _effects("impression"), 100)
        assert raw.zrange("arb:udz:ann", 0, -1) == [b"new"]
        assert raw.zrange("arb:ukz:ann", 0, -1) == [b"fresh"]
        assert raw.zcard("arb:ulz:ann") == 21
        last = store.learning_events("", 100)[-1][0]
        raw.xtrim("arb:learn", minid=last, approximate=False)  # as the learner trims it
        store.commit_feedback("new", "later", _effects("click"), 100)
        assert raw.zcard("arb:ulz:ann") == 2  # the entries the log still holds
        raw.sadd("arb:ud:ann", "legacy")  # an index as written before 0.1
        raw.set("arb:d:legacy", b"x")
        assert store.forget("ann") >= 2
        assert not raw.keys("arb:u*:ann") and not raw.exists("arb:d:legacy", "arb:d:new")
    finally:
        store.close()
        raw.close()


def test_decisions_in_flight_are_written_in_one_round_trip_and_indexed(redis_url: str) -> None:
    """The asyncio Decide I/O writes the records of the decisions waiting together as one
    command: every record stored with its TTL and indexed under its customer (two of the
    same customer's included), each caller answered after its own record is stored."""
    import asyncio

    import redis

    store = RedisStore(redis_url, cache_ttl=0)
    io = store.decide_io()
    raw = redis.Redis.from_url(redis_url)
    records = [_decision("a1", user="ann"), _decision("a2", user="ann"),
               _decision("b1", user="bob")]

    async def save_all() -> None:
        await asyncio.gather(*(io.save_decision(r, 100, 5.0) for r in records))
        await io.aclose()

    try:
        asyncio.run(save_all())
        assert io.round_trips == 1
        for r in records:
            assert store.get_decision(r.decision_id) == r
            assert 95 <= raw.ttl(f"arb:d:{r.decision_id}") <= 100
        assert raw.zrange("arb:udz:ann", 0, -1) == [b"a1", b"a2"]
        assert raw.zrange("arb:udz:bob", 0, -1) == [b"b1"]
        expiry = raw.zscore("arb:udz:bob", "b1")
        assert expiry is not None and abs(expiry - (time.time() + 100)) < 5
        assert raw.ttl("arb:udz:ann") > 100  # the record's TTL plus its age
    finally:
        store.close()
        raw.close()


def test_asyncio_profile_updates_are_compare_and_set_in_shared_round_trips(
        redis_url: str) -> None:
    """TrackEvent's update on the asyncio I/O: a profile read (or taken from the cache),
    changed, and written by the next round trip's script only if it is still as read.
    Concurrent updates of one customer all count, each with its own log entry indexed
    under the customer; another replica's write behind a stale cached copy is not lost
    (the update is refused and retried); many customers' updates share round trips."""
    import asyncio

    from engine.records import decode_event

    mine, other = RedisStore(redis_url, cache_ttl=60), RedisStore(redis_url, cache_ttl=60)
    io = mine.decide_io()
    raw = redis.Redis.from_url(redis_url)

    def view(user: str) -> Callable[[Profile | None], Profile]:
        return lambda p: record_event(p, user, "view", 1.0, NOW, {})

    def entry(user: str) -> Callable[[Profile], LearningEvent]:
        return lambda p: LearningEvent("", "", "interaction", NOW, NOW, user=user)

    async def work() -> int:
        await io.update_profile("ann", view("ann"), None, 5.0)
        mine.get_profile("ann")  # cached here
        other.update_profile("ann", view("ann"))  # another replica: the copy is stale
        await io.update_profile("ann", view("ann"), None, 5.0)
        await asyncio.gather(*(io.update_profile("bob", view("bob"), entry("bob"), 5.0)
                               for _ in range(20)))
        before = io.round_trips
        await asyncio.gather(*(io.update_profile(f"c{i}", view(f"c{i}"), None, 5.0)
                               for i in range(30)))
        trips = io.round_trips - before
        await io.aclose()
        return trips

    try:
        trips = asyncio.run(work())
        fresh = RedisStore(redis_url, cache_ttl=0)
        ann, bob = fresh.get_profile("ann"), fresh.get_profile("bob")
        fresh.close()
        assert ann is not None and ann.events["view"].count == 3
        assert bob is not None and bob.events["view"].count == 20
        logged = [decode_event(f[b"e"]) for _, f in raw.xrange("arb:learn")]
        assert [e.user for e in logged if e is not None] == ["bob"] * 20
        assert raw.zcard("arb:ulz:bob") == 20  # each entry indexed (ForgetProfile)
        assert trips <= 4  # 30 customers: their reads, then their writes, together
        assert all(mine.get_profile(f"c{i}") is not None for i in range(30))
    finally:
        for store in (mine, other):
            store.close()
        raw.close()


def test_asyncio_feedback_rides_shared_round_trips_once_per_key(redis_url: str) -> None:
    """Feedback on the server's shared round trips: sixteen concurrent sends with one key
    apply once (the rest are duplicates), distinct keys on distinct decisions all apply,
    in fewer round trips than calls; an error reply in a round trip fails only the call
    it answers, not the others carried with it."""
    import asyncio

    store = RedisStore(redis_url, cache_ttl=0)
    io = store.decide_io()
    raw = redis.Redis.from_url(redis_url)
    for i in range(20):
        store.save_decision(_decision(f"d{i}", user=f"u{i % 4}"), TTL)
    raw.set("arb:not-a-number", "x")

    async def work() -> tuple[list[bool], list[bool], int, object, object]:
        same = await asyncio.gather(*(io.commit_feedback(
            "d0", "key", _effects("click", 1.0, 1.0), TTL, "", 5.0) for _ in range(16)))
        before = io.round_trips
        many = await asyncio.gather(*(io.commit_feedback(
            f"d{i}", f"k{i}", _effects("impression", 1.0), TTL, "", 5.0)
            for i in range(1, 20)))
        trips = io.round_trips - before
        bad, good = await asyncio.gather(io._track.command("INCR", "arb:not-a-number"),
                                         io._track.command("GET", "arb:not-a-number"),
                                         return_exceptions=True)
        await io.aclose()
        return ([c.duplicate for c in same], [c.duplicate for c in many], trips, bad, good)

    try:
        same, many, trips, bad, good = asyncio.run(work())
        assert sorted(same) == [False] + [True] * 15
        assert many == [False] * 19
        assert trips < 3 * 19  # two reads and a script each, shared
        record = store.get_decision("d0")
        assert record is not None and record.outcomes == {"offer": ["click"]}
        assert store.arm_counts("exp") == {"offer": ArmCounts(20.0, 1.0)}
        assert len(store.learning_events("", 100)) == 20
        assert isinstance(bad, StoreUnavailable) and good == b"x"
    finally:
        store.close()
        raw.close()


def test_asyncio_writes_give_a_profile_its_retention(redis_url: str) -> None:
    """The server's asyncio paths (TrackEvent's update script, Feedback's script on the
    shared round trips) set the profile's TTL as the synchronous store does; without a
    retention the key has none."""
    import asyncio

    store = RedisStore(redis_url, profile_retention=3600)
    io = store.decide_io()
    raw = redis.Redis.from_url(redis_url)

    async def work() -> None:
        await io.update_profile("ann", lambda p: record_event(p, "ann", "view", 1.0, NOW, {}),
                                None, 5.0)
        store.save_decision(_decision("d1", user="fed"), TTL)
        await io.commit_feedback("d1", "k1", _effects("impression", trials=1.0), TTL, "", 5.0)
        store.profile_retention = 0.0
        await io.update_profile("bob", lambda p: record_event(p, "bob", "view", 1.0, NOW, {}),
                                None, 5.0)

    asyncio.run(work())
    assert 3590 < raw.ttl(store.key("p", "ann")) <= 3600
    assert 3590 < raw.ttl(store.key("p", "fed")) <= 3600
    assert raw.ttl(store.key("p", "bob")) == -1  # no TTL: kept for ever


def test_the_memory_stores_expiry_heap_holds_one_entry_per_profile() -> None:
    """Each write moves a profile's due time, not a new heap entry: a busy customer
    costs one entry, not one per event for the retention period."""
    now = [NOW]
    store = MemoryStore(clock=lambda: now[0], profile_retention=100.0)
    for i in range(1000):
        user = f"u{i % 10}"
        store.update_profile(user, lambda p, u=user: record_event(p, u, "view", 1.0, NOW, {}))
        now[0] += 0.1
    assert len(store._expiries) == 10
    now[0] += 60  # each u was last written 99.0-99.9 s after NOW: due 199.0-199.9
    store.update_profile("x", lambda p: record_event(p, "x", "view", 1.0, NOW, {}))
    assert all(store.get_profile(f"u{i}") is not None for i in range(10))
    now[0] += 41  # NOW + 201: past every u's due time
    store.update_profile("y", lambda p: record_event(p, "y", "view", 1.0, NOW, {}))
    assert [store.get_profile(f"u{i}") for i in range(10)] == [None] * 10
    assert sorted(store._profiles) == ["x", "y"]
