"""Unit tests per stage: profile aggregation, feedback counting, bandit, learner."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryStore
from dsl.ruleset import DEFAULT_MODEL
from engine.decide.contacts import contact_entries, impressions_within
from engine.feedback import ActionNotInDecision, FeedbackInput, feedback_effects
from engine.learning.consumer import Learner
from engine.learning.models import PropensityModels
from engine.profiles import (
    MAX_RECENT_EVENTS,
    PACKED,
    PAIRS,
    PROFILE_LAYOUTS,
    recent_events,
    record_contact,
    record_event,
)
from engine.records import (
    ArmCounts,
    ContactLog,
    DecisionRecord,
    ShownAction,
    decode_profile,
    encode,
)

NOW = 1_800_000_000.0


# ---- profiles ------------------------------------------------------------------------
def test_record_event_aggregates_and_traits() -> None:
    p = record_event(None, "u", "purchase", 100.0, NOW - 10, {"first_name": "Ann"})
    p = record_event(p, "u", "purchase", 50.0, NOW - 20, {})  # out of order is fine
    stats = p.events["purchase"]
    assert (stats.count, stats.total, stats.first_at, stats.last_at) == (
        2, 150.0, NOW - 20, NOW - 10)
    assert [t for t, _ in recent_events(stats)] == [NOW - 20, NOW - 10]
    assert p.attributes == {"first_name": "Ann"}
    assert (p.first_seen, p.last_seen) == (NOW - 20, NOW - 10)
    p = record_event(p, "u", "visit", 0.0, NOW, {"first_name": None})
    assert "first_name" not in p.attributes


def test_recent_events_are_bounded_but_totals_exact() -> None:
    p = None
    for i in range(MAX_RECENT_EVENTS + 50):
        p = record_event(p, "u", "visit", 1.0, NOW + i, {})
    assert p is not None
    assert len(recent_events(p.events["visit"])) == MAX_RECENT_EVENTS
    assert p.events["visit"].count == MAX_RECENT_EVENTS + 50
    assert p.events["visit"].total == MAX_RECENT_EVENTS + 50


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0.0, 1.0, 2.5, -1.0])),
                min_size=1, max_size=60),
       st.integers(1, 30), st.integers(0, 50), st.integers(1, 40))
def test_a_packed_history_holds_and_counts_what_the_list_of_pairs_did(
        events: list[tuple[int, float]], cap: int, now: int, window: int) -> None:
    """The packed layout (this build's) and the pairs layout (``--profile-layout pairs``,
    what builds before session 17 read and wrote) keep the same events in the same
    order as the list the old code kept with ``insort`` and trimmed, whichever layout
    each event found; the rules' windowed count and sum read the same from both."""
    import random
    from bisect import insort
    from unittest import mock

    import dsl.runtime as runtime
    import engine.profiles as profiles
    from dsl.runtime import count_within, sum_within

    horizon_of = 25.0  # (retention, in these tests' seconds)
    expected: list[tuple[float, float]] = []
    layouts = random.Random(len(events) * cap).choices(PROFILE_LAYOUTS, k=len(events))
    packed = pairs = mixed = None
    with mock.patch.object(profiles, "MAX_RECENT_EVENTS", cap), \
            mock.patch.object(profiles, "EVENT_RETENTION_SECONDS", horizon_of):
        for (at, value), layout in zip(events, layouts, strict=True):
            packed = record_event(packed, "u", "visit", value, float(at), {}, PACKED)
            pairs = record_event(pairs, "u", "visit", value, float(at), {}, PAIRS)
            mixed = record_event(mixed, "u", "visit", value, float(at), {}, layout)
            insort(expected, (float(at), value))  # the code before session 17
            last = max(t for t, _ in expected) - horizon_of
            expected = [e for e in expected if e[0] >= last][-cap:]
    assert packed is not None and pairs is not None and mixed is not None
    assert isinstance(packed.events["visit"].recent, bytes)
    assert isinstance(pairs.events["visit"].recent, list)
    ahead = now + 5  # (an event stamped a little ahead has happened: here 5 s ahead)
    for profile in (packed, pairs, mixed):
        stats = profile.events["visit"]
        assert recent_events(stats) == expected
        with mock.patch.object(runtime, "AHEAD_SECONDS", 5.0):
            assert count_within(stats, float(now), float(window)) == sum(
                1 for t, _ in expected if now - window <= t <= ahead)
            assert sum_within(stats, float(now), float(window)) == math.fsum(
                v for t, v in expected if now - window <= t <= ahead)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.sampled_from(("impression", "click", "dismiss")),
                          st.sampled_from(("web", "email", "sms")), st.sampled_from("ab")),
                max_size=80),
       st.integers(1, 30), st.integers(0, 70), st.integers(1, 40))
def test_a_packed_contact_history_holds_and_counts_what_the_list_did(
        contacts: list[tuple[int, str, str, str]], cap: int, now: int, window: int) -> None:
    """Packed contact logs (this build's), the list layout (``--profile-layout pairs``,
    what builds before session 18 read and wrote) and any mix keep the same contacts in
    the same order as the list the old code kept with ``insort`` and trimmed; caps,
    cooldowns and channel caps count the same from all of them."""
    import random
    from bisect import insort
    from unittest import mock

    import engine.profiles as profiles
    from engine.decide.contacts import last_contact, outcomes_within

    retention = 25.0
    expected: dict[str, list[tuple[float, str, str]]] = {"a": [], "b": []}
    layouts = random.Random(len(contacts) * cap).choices(PROFILE_LAYOUTS, k=len(contacts))
    packed = pairs = mixed = None
    with mock.patch.object(profiles, "MAX_CONTACTS_PER_ACTION", cap), \
            mock.patch.object(profiles, "CONTACT_RETENTION_SECONDS", retention):
        for (at, outcome, channel, action), layout in zip(contacts, layouts, strict=True):
            packed = record_contact(packed, "u", action, outcome, float(at), channel, PACKED)
            pairs = record_contact(pairs, "u", action, outcome, float(at), channel, PAIRS)
            mixed = record_contact(mixed, "u", action, outcome, float(at), channel, layout)
            history = expected[action]  # the code before session 18:
            insort(history, (float(at), outcome, channel))
            while history and (history[0][0] < at - retention or len(history) > cap):
                history.pop(0)
            for other in expected.values():  # (and actions not shown since: forgotten)
                if other and other[-1][0] < at - retention:
                    other.clear()
    if packed is None or pairs is None or mixed is None:
        return
    assert all(isinstance(h, ContactLog) for h in packed.contacts.values())
    assert all(isinstance(h, list) for h in pairs.contacts.values())
    for profile in (packed, pairs, mixed):
        decoded = decode_profile(encode(profile))
        for action, history in expected.items():
            if history:
                assert contact_entries(decoded.contacts[action]) == history
                assert contact_entries(profile.contacts[action]) == history
            else:
                assert action not in decoded.contacts
            for outcome in ("impression", "click", "dismiss"):
                times = [t for t, o, _ in history if o == outcome]
                assert last_contact(decoded, action, outcome) == (max(times) if times else None)
        for outcome, channel in itertools.product(("impression", "click"),
                                                  ("web", "email", None)):
            assert outcomes_within(decoded, ("a", "b"), float(now), float(window), outcome,
                                   channel) == sum(
                1 for h in expected.values() for t, o, c in h
                if o == outcome and now - window < t and channel in (None, c))  # (and
                # after now: a contact stamped ahead of the decision has happened)


def test_a_profile_keeps_a_bounded_number_of_event_types() -> None:
    """A ruleset without ``events:`` accepts any event type: a client sending a new name
    with every event grows no profile past MAX_EVENT_TYPES (the least recent goes)."""
    from engine.profiles import MAX_EVENT_TYPES

    p = None
    for k in range(MAX_EVENT_TYPES + 50):
        p = record_event(p, "u", f"type_{k}", 1.0, NOW + k, {})
    p = record_event(p, "u", "type_60", 1.0, NOW + 1000, {})  # (seen again: kept)
    p = record_event(p, "u", "brand_new", 1.0, NOW + 1001, {})
    assert p is not None and len(p.events) == MAX_EVENT_TYPES
    assert "type_60" in p.events and "brand_new" in p.events and "type_50" not in p.events
    assert "type_49" not in p.events and "type_51" in p.events


def test_an_overlong_stored_contact_list_keeps_its_newest() -> None:
    """A list layout longer than the cap (written by no build of ours), each contact of
    another kind: the newest MAX_CONTACTS_PER_ACTION stay, as trimming always kept."""
    from engine.profiles import MAX_CONTACTS_PER_ACTION
    from engine.records import Profile

    old = [(NOW - 1000 + k, "impression", f"ch{k}") for k in range(300)]
    p = record_contact(Profile("u", contacts={"a": list(old)}), "u", "a", "click", NOW, "web")
    assert contact_entries(p.contacts["a"]) == [*old, (NOW, "click", "web")][
        -MAX_CONTACTS_PER_ACTION:]


def test_impressions_within_window() -> None:
    p = record_contact(None, "u", "offer", "impression", NOW - 8 * 86400, "web")
    p = record_contact(p, "u", "offer", "impression", NOW - 86400, "web")
    p = record_contact(p, "u", "offer", "click", NOW - 86400, "web")
    assert impressions_within(p, "offer", NOW, 7 * 86400) == 1
    assert impressions_within(p, "offer", NOW, 30 * 86400) == 2
    assert impressions_within(p, "other", NOW, 30 * 86400) == 0


# ---- feedback counting ---------------------------------------------------------------
def decision(arm: bool = True) -> DecisionRecord:
    return DecisionRecord(
        decision_id="d1", user_id="u", placement="home", channel="web", revision="r",
        decided_at=NOW, features={"segment:x": 1.0},
        actions=[ShownAction("a", 1, 0.5, 0.5, 1.0, "exp" if arm else None,
                             "a" if arm else None, "click" if arm else None)])


def fb(outcome: str) -> FeedbackInput:
    return FeedbackInput("d1", "a", outcome, None, "", NOW, NOW)


def test_impression_then_click_is_one_trial_one_success() -> None:
    d = decision()
    first = feedback_effects(fb("impression"), d, None)
    assert first.arm_increments == {("exp", "a"): ArmCounts(1.0, 0.0)}
    second = feedback_effects(fb("click"), first.decision, first.profile)
    assert second.arm_increments == {("exp", "a"): ArmCounts(0.0, 1.0)}
    again = feedback_effects(fb("click"), second.decision, second.profile)
    assert again.arm_increments == {} and again.event.first is False


def test_click_without_impression_implies_one() -> None:
    effects = feedback_effects(fb("click"), decision(), None)
    assert effects.arm_increments == {("exp", "a"): ArmCounts(1.0, 1.0)}
    assert effects.profile is not None
    contacts = contact_entries(effects.profile.contacts["a"])
    assert sorted(o for _, o, _ in contacts) == ["click", "impression"]
    assert {c for _, _, c in contacts} == {"web"}
    assert impressions_within(effects.profile, "a", NOW, 60) == 1


def test_feedback_for_an_action_not_shown_is_rejected() -> None:
    with pytest.raises(ActionNotInDecision):
        feedback_effects(FeedbackInput("d1", "zzz", "click", None, "", NOW, NOW),
                         decision(), None)


def test_non_experiment_actions_do_not_touch_bandits() -> None:
    assert feedback_effects(fb("click"), decision(arm=False), None).arm_increments == {}




# ---- learner: delayed labels, snapshots --------------------------------------------------
def _feedback(store: MemoryStore, decision_id: str, outcome: str, received: float) -> None:
    d = decision(arm=False)
    d.decision_id = decision_id
    if store.get_decision(decision_id) is None:
        store.save_decision(d, 3600)
    store.commit_feedback(decision_id, f"{decision_id}:{outcome}", lambda dd, p: feedback_effects(
        FeedbackInput(dd.decision_id, "a", outcome, None, "", NOW, received), dd, p), 3600)


def test_learner_learns_impressions_at_once_and_clicks_once() -> None:
    """Each shown action: a (fake) negative at its first outcome, a positive at its first
    reward, nothing else, nothing waiting (engine.learning.delayed)."""
    store = MemoryStore(clock=lambda: NOW)
    models = PropensityModels()
    learner = Learner(store, models, lambda _p, _a: (DEFAULT_MODEL, 0.05), reward_wait=100.0)
    x = {"segment:x": 1.0}
    for i in range(40):
        _feedback(store, f"d{i}", "impression", NOW + i)
    assert learner.catch_up() == 40
    assert models.examples_seen("a") == 40
    low = models.predict("a", DEFAULT_MODEL, 0.05, x)
    assert low < 0.05  # negatives learnt at once, not after the wait
    for i in range(20):  # clicks, then a conversion and a second click: one positive each
        _feedback(store, f"d{i}", "click", NOW + 40 + i)
    _feedback(store, "d0", "conversion", NOW + 61)
    _feedback(store, "d0", "dismiss", NOW + 62)
    learner.catch_up()
    assert models.examples_seen("a") == 40  # positives are second labels, not new examples
    assert models.predict("a", DEFAULT_MODEL, 0.05, x) > low
    assert len(learner.labels) == 40  # awaiting final labels, for the quality metrics only
    _feedback(store, "later", "click", NOW + 200)  # the wait has passed for all 40
    learner.catch_up()
    assert len(learner.labels) == 1
    (quality,) = models.quality()
    assert quality.observed_rate == pytest.approx(20 / 40)


class _CountingDict(OrderedDict[Any, Any]):
    """Counts the entries any iteration over it examines."""

    examined = 0

    def items(self) -> Any:
        for item in super().items():
            _CountingDict.examined += 1
            yield item


def test_applying_an_event_does_not_scan_what_is_waiting() -> None:
    """The work per event is flat in the number of impressions awaiting a label."""
    store = MemoryStore(clock=lambda: NOW)
    learner = Learner(store, PropensityModels(), lambda _p, _a: (DEFAULT_MODEL, 0.05),
                      reward_wait=1e9, snapshot_every=10**9)
    learner.labels.waiting = _CountingDict(learner.labels.waiting)
    for i in range(20_000):
        learner.labels.shown((f"w{i}", "a"), "a", 0.05, NOW)
    for i in range(200):
        _feedback(store, f"d{i}", "impression", NOW + i)
    _CountingDict.examined = 0
    assert learner.catch_up() == 200
    assert len(learner.labels) == 20_200
    assert _CountingDict.examined <= 200  # one look at the oldest entry per event


def test_learner_snapshot_and_restore_resume_at_offset() -> None:
    store = MemoryStore(clock=lambda: NOW)
    models = PropensityModels()
    learner = Learner(store, models, lambda _p, _a: (DEFAULT_MODEL, 0.05), snapshot_every=1,
                      snapshot_seconds=0.0, snapshot_key=b"k")
    d = decision(arm=False)
    store.save_decision(d, 3600)
    store.commit_feedback("d1", "k", lambda dd, p: feedback_effects(fb("click"), dd, p), 3600)
    learner.catch_up()
    restored = Learner(store, PropensityModels(), lambda _p, _a: (DEFAULT_MODEL, 0.05),
                       snapshot_key=b"k")
    restored.restore()
    assert restored.offset == learner.offset == "1"
    assert restored.catch_up() == 0
    x = {"segment:x": 1.0}
    expected = models.predict("a", DEFAULT_MODEL, 0.05, x)
    assert restored.models.predict("a", DEFAULT_MODEL, 0.05, x) == pytest.approx(expected)


def test_decision_ids_do_not_follow_the_global_random_state() -> None:
    """Found by the API fuzzer: Hypothesis reseeds the global ``random`` for each example,
    and decision ids drawn from it repeated (a feedback then met another decision)."""
    import random

    from engine.service import new_decision_id

    random.seed(7)
    first = new_decision_id()
    random.seed(7)
    assert new_decision_id() != first


def test_the_deadline_clock_is_the_event_loops() -> None:
    """RPC deadlines are kept with ``loop_time`` (no ``getpid`` system call per read, as
    ``asyncio.get_running_loop()`` makes on Python 3.11) and checked by
    ``asyncio.timeout_at``, which reads the loop's clock: they must be the same clock."""
    import asyncio

    from engine.grpc.errors import loop_time

    async def readings() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        return loop.time(), loop_time(), loop.time()

    before, ours, after = asyncio.run(readings())
    assert before <= ours <= after


def test_predictions_awaiting_their_label_are_untracked_and_old_entries_still_read() -> None:
    """Up to 100,000 impressions await their final label per learner: tuples of atoms,
    which the collector stops tracking; a snapshot before format 3 holds lists, which
    are rewarded and expire the same way."""
    import gc

    from engine.learning.quality import FinalLabels, _pseudonym

    labels = FinalLabels()
    labels.shown(("d1", "a"), "a", 0.25, at=1.0)
    labels.shown(("d2", "a"), "a", 0.5, at=2.0)
    labels.waiting[_pseudonym(("d0", "a"))] = [0.5, "a", 0.125, False]  # format 2
    labels.waiting.move_to_end(_pseudonym(("d0", "a")), last=False)
    labels.rewarded(("d1", "a"))
    labels.rewarded(("d0", "a"))
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in labels.waiting.values())
    assert labels.expire(before=1.5) == [("a", True, 0.125), ("a", True, 0.25)]
    assert labels.expire(before=3.0) == [("a", False, 0.5)]


def test_what_learning_keeps_per_customer_is_not_walked_by_the_cyclic_collector() -> None:
    """Every full collection walks every object the collector tracks, every request in
    flight waiting. The in-memory store's learning log (up to --learning-log-max entries)
    and the scores' customers awaiting a label (up to 200,000) are numbers and strings:
    kept out of its lists, and its per-customer indexes (of log entries, decisions and
    feedback keys) untracked dicts and bytearrays, the objects it tracks do not grow with
    the customers, where they grew by four per customer with an event (bench/RESULTS.md
    §34, §35)."""
    import gc
    import time
    from pathlib import Path

    from bench.heap_pause import serve_customers
    from dsl.loader import load_path
    from engine.service import Arbiter

    arb = Arbiter(load_path(Path(__file__).parent.parent / "rulesets/retail"),
                  MemoryStore(), seed=1)
    now = time.time()

    def customers(start: int, count: int) -> int:
        serve_customers(arb, start, start + count, now - 60)
        gc.collect()
        gc.collect()  # (a tuple is dropped once what it holds has been)
        return len(gc.get_objects())

    first = customers(0, 500)
    assert (customers(500, 2000) - first) / 2000 < 0.1


class OldEventStats(msgspec.Struct, omit_defaults=True):  # (as before session 17)
    count: int = 0
    total: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    recent: list[tuple[float, float]] = []


class OldProfile(msgspec.Struct, omit_defaults=True):
    user_id: str
    events: dict[str, OldEventStats] = {}
    contacts: dict[str, list[tuple[float, str, str]]] = {}


def test_profile_layouts_across_a_rolling_upgrade() -> None:
    """A profile stored by a build before session 17 (pairs) is read here and decides the
    same; with ``--profile-layout pairs`` this build writes what such a build reads; the
    packed layout is refused by such a build's decoder (a corrupt profile: degraded, not
    a history silently read as empty)."""
    from engine.records import encode

    def history(layout: str) -> Any:
        p = None
        for k in range(5):
            p = record_event(p, "u", "purchase", 10.0 + k, NOW - k * 3600, {}, layout)
            p = record_contact(p, "u", "offer", ("impression", "click")[k % 2],
                               NOW - k * 3600, "web", layout)
        return p

    packed, pairs = history(PACKED), history(PAIRS)
    old = msgspec.msgpack.decode(encode(pairs), type=OldProfile)
    assert old.events["purchase"].recent == recent_events(packed.events["purchase"])
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(encode(packed), type=OldProfile)
    # an old build's profile, read and extended here, in either layout
    stored = msgspec.msgpack.encode(old)
    from engine.records import decode_profile

    again = decode_profile(stored)
    assert recent_events(again.events["purchase"]) == recent_events(packed.events["purchase"])
    extended = record_event(again, "u", "purchase", 1.0, NOW, {})
    assert isinstance(extended.events["purchase"].recent, bytes)
    assert len(recent_events(extended.events["purchase"])) == 6
    # the contact history the same way (session 18 packed it)
    assert old.contacts["offer"] == contact_entries(packed.contacts["offer"])
    assert contact_entries(again.contacts["offer"]) == old.contacts["offer"]
    contacted = record_contact(again, "u", "offer", "impression", NOW, "web")
    assert isinstance(contacted.contacts["offer"], ContactLog)
    assert contact_entries(contacted.contacts["offer"]) == [*old.contacts["offer"],
                                                              (NOW, "impression", "web")]
    with pytest.raises(msgspec.ValidationError):  # (the events alone would fail it too)
        msgspec.msgpack.decode(encode(msgspec.structs.replace(packed, events={})),
                               type=OldProfile)


def test_a_packed_history_of_the_wrong_length_is_a_corrupt_profile() -> None:
    """Stored bytes that are not whole (timestamp, value) pairs: the profile is corrupt
    (degraded, DATA_LOSS, ForgetProfile heals), never an error deep in a rule."""
    from engine.records import CorruptRecord, EventStats, Profile, decode_profile, encode

    good = Profile(user_id="u", events={"visit": EventStats(count=1, recent=b"\0" * 16)})
    assert decode_profile(encode(good)).events["visit"].count == 1
    bad = Profile(user_id="u", events={"visit": EventStats(count=1, recent=b"\0" * 12)})
    with pytest.raises(CorruptRecord, match=r"events\.visit\.recent"):
        decode_profile(encode(bad))
    times = b"\0" * 16
    for codes, kinds in ((b"\0\0", []), (b"\0\1", [("impression", "web")]),
                         (b"\0", [("impression", "web")]),
                         (b"\0\0", [("impression", str(k)) for k in range(256)])):
        bad = Profile(user_id="u", contacts={"offer": ContactLog(times, codes, kinds)})
        with pytest.raises(CorruptRecord, match=r"contacts\.offer"):
            decode_profile(encode(bad))
    good = Profile(user_id="u", contacts={"offer": ContactLog(times, b"\0\1", [
        ("impression", "web"), ("click", "web")])})
    assert contact_entries(decode_profile(encode(good)).contacts["offer"]) == [
        (0.0, "impression", "web"), (0.0, "click", "web")]
