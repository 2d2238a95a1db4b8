"""Records that cross a boundary (stored in Redis, logged, replayed): msgspec Structs.

One declared type per record, encoded as MessagePack. Records are plain data; the
functions that change them live in :mod:`engine.profiles` and :mod:`engine.feedback`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import zlib
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.feature_names import FeatureNameSets

AttrValue = str | float | bool | list[str] | dict[str, str] | None


class EventStats(msgspec.Struct, omit_defaults=True):
    """Aggregates of one event type on a profile.

    ``recent`` keeps the newest events' ``(timestamp, value)``, oldest first, bounded by
    :data:`engine.profiles.MAX_RECENT_EVENTS` and the retention window; windowed
    ``count``/``sum`` in rules read it, all-time numbers read ``count``/``total``. It is
    packed float64s ``t0, v0, t1, v1, ...`` (``bytes``: a profile decodes without an
    object per event, bench/RESULTS.md §35), or, as profiles were before session 17 and
    are written with ``--profile-layout pairs``, a list of pairs: both are read
    (:func:`engine.profiles.recent_events`).
    """

    count: int = 0
    total: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    recent: list[tuple[float, float]] | bytes = []


class ContactLog(msgspec.Struct, rename={"times": "t", "codes": "c", "kinds": "k"}):
    """One action's contact history, packed: ``times`` are float64s, oldest first; each
    contact has one byte in ``codes``, the index in ``kinds`` of its (outcome, channel).

    Contact policies count in a window by bisecting the times and counting codes, and a
    profile decodes three objects per action instead of a tuple per contact
    (:mod:`engine.decide.contacts` reads it, :func:`engine.profiles.record_contact`
    writes it).
    """

    times: bytes
    codes: bytes
    kinds: list[tuple[str, str]]


ContactHistory = list[tuple[float, str, str]] | ContactLog
"""An action's contacts: packed (this build writes), or the (timestamp, outcome, channel)
list builds before session 18 wrote and ``--profile-layout pairs`` still does."""


class Profile(msgspec.Struct, omit_defaults=True):
    """Everything Arbiter holds about one customer."""

    user_id: str
    attributes: dict[str, AttrValue] = {}
    events: dict[str, EventStats] = {}
    # action_id -> its contacts, oldest first: the contact history that contact policies
    # (caps, cooldowns, suppression) are enforced from (a ContactLog, or older profiles'
    # [(timestamp, outcome, channel)]; read with engine.decide.contacts)
    contacts: dict[str, ContactHistory] = {}
    first_seen: float | None = None
    last_seen: float | None = None
    version: int = 0
    # hour of the week (UTC, Monday 00:00 = 0) -> engagements then (send-time optimisation)
    engagement: dict[int, float] = {}
    # [(timestamp, item id, event)], oldest first, bounded (engine.profiles.MAX_ITEM_HISTORY):
    # what the customer viewed, bought, clicked (recommendations and their exclusions)
    items: list[tuple[float, str, str]] = []
    # when the clusters last learnt this customer's features (at most once a day each)
    clustered_at: float | None = None
    # the TrackEvent ids received lately, oldest first: 24 bytes each, the time received
    # (float64) and 8-byte digests of the id and of the event (engine.profiles.event_ids)
    event_ids: bytes = b""


class ShownAction(msgspec.Struct, omit_defaults=True, array_like=True):
    """One action of a :class:`DecisionRecord` (stored by position, as the record)."""

    action_id: str
    rank: int
    score: float
    propensity: float
    value: float
    experiment: str | None = None
    arm: str | None = None
    reward: str | None = None  # the experiment's reward outcome, when an arm
    reward_value: bool = False  # the reward is the outcome's value (revenue)
    windowed: bool = False  # the experiment keeps hourly buckets (window / half-life)
    # P(the policy puts this action in this slot | the request): 1.0 for a
    # deterministic choice; Thompson sampling and fixed splits make it less. Logged
    # for off-policy evaluation (`arbiter replay`); computed for the top slot.
    probability: float = 1.0
    items: list[str] = []  # the recommended items shown with it, best first


class DecisionRecord(msgspec.Struct, omit_defaults=True, array_like=True):
    """What was decided, kept for the attribution window so feedback can join it.

    Stored as an array, fields by position (a record is kept for every decision shown,
    for days: field names in every one made it a quarter larger); a field added later
    goes at the end, with a default (earlier builds then ignore it). Records stored as
    maps by earlier builds still decode (:func:`decode_decision`).
    """

    decision_id: str
    user_id: str
    placement: str
    channel: str
    revision: str
    decided_at: float
    actions: list[ShownAction]
    features: dict[str, float] = {}
    # action_id -> outcomes already counted for it (each counts once per decision)
    outcomes: dict[str, list[str]] = {}
    holdout: str | None = None  # experiment whose holdout the customer was in

    def shown(self, action_id: str) -> ShownAction | None:
        return next((a for a in self.actions if a.action_id == action_id), None)


class LearningEvent(msgspec.Struct, omit_defaults=True, gc=False):
    """One acknowledged outcome, as the propensity models learn it (in log order).

    Untracked by the cyclic collector (``gc=False``; nothing in it can refer back to it:
    strings, numbers, dicts of numbers, a tuple of strings): the in-memory store keeps up
    to ``--learning-log-max`` of them, which every full collection walked
    (bench/RESULTS.md §34)."""

    decision_id: str
    action_id: str
    outcome: str
    at: float
    received_at: float
    features: dict[str, float] = {}
    value: float | None = None
    first: bool = True  # first outcome of this kind for this decision-action
    placement: str = ""  # where it was shown: selects the placement's model
    # the labels it teaches (engine.learning.delayed): the first evidence that the action
    # was shown is a (fake) negative; the first reward of the decision-action a positive
    shown: bool = False
    rewarded: bool = False
    # an interaction with a catalogue item (TrackEvent with an item, or Feedback on a
    # recommended item): the recommender learns it. ``user`` is a pseudonym
    # (:func:`pseudonym`), ``history`` the customer's previous items, newest first.
    # outcome "forget" with no item: drop what the recommender holds about ``user``.
    user: str = ""
    item_id: str = ""
    history: tuple[str, ...] = ()
    # a TrackEvent's cluster features of the customer after it (``NAME/feature``)
    profile_features: dict[str, float] = {}


class ArmCounts(msgspec.Struct):
    """Bandit statistics of one arm: trials (impressions) and rewards.

    ``successes`` is the sum of rewards: 1 per reward outcome for binary rewards,
    the outcome's value for continuous ones (``reward: conversion.value``), whose
    squares are summed in ``sum_sq`` for the Normal-Gamma posterior.
    """

    trials: float = 0.0
    successes: float = 0.0
    sum_sq: float = 0.0


ARM_FIELDS = ("trials", "successes", "sum_sq")


def counter_deltas(increments: Mapping[tuple[str, str], ArmCounts]
                   ) -> dict[str, dict[str, float]]:
    """Arm increments as every store applies them: experiment -> ``{arm}:{field}`` -> delta.

    Zero deltas are left out. Stores keep each experiment's counters as one flat
    hash of these fields (Redis ``HINCRBYFLOAT``; a dict in memory).

    >>> counter_deltas({("hero", "a"): ArmCounts(trials=1.0, successes=0.0)})
    {'hero': {'a:trials': 1.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for (experiment, arm), delta in increments.items():
        for name in ARM_FIELDS:
            value = getattr(delta, name)
            if value:
                fields = out.setdefault(experiment, {})
                fields[f"{arm}:{name}"] = fields.get(f"{arm}:{name}", 0.0) + value
    return out


def counts_from_fields(fields: Mapping[str, float]) -> dict[str, ArmCounts]:
    """An experiment's flat counter hash back as ``ArmCounts`` per counter key.

    >>> counts = counts_from_fields({"a:trials": 2.0, "a:successes": 1.0, "a@7:trials": 1.0})
    >>> counts["a"], counts["a@7"].trials
    (ArmCounts(trials=2.0, successes=1.0, sum_sq=0.0), 1.0)
    """
    counts: dict[str, ArmCounts] = {}
    for field, value in fields.items():
        arm, _, name = field.rpartition(":")
        if name in ARM_FIELDS:
            setattr(counts.setdefault(arm, ArmCounts()), name, float(value))
    return counts


PSEUDONYMS_KEPT = 32_768
"""Pseudonyms remembered per process (under 15 MB even with 256-character ids)."""


@functools.lru_cache(maxsize=PSEUDONYMS_KEPT)  # a returning customer's, without the hash
def pseudonym(user_id: str) -> str:
    """How the learning log and the recommender name a customer: 16 hex digits of
    SHA-256, never the id itself.

    >>> pseudonym("alice")
    '2bd806c97f0e00af'
    """
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


def recent_items(history: list[tuple[float, str, str]], limit: int, skip: str = ""
                 ) -> list[str]:
    """Distinct item ids of a history, newest first.

    >>> recent_items([(1.0, "a", "view"), (2.0, "b", "view"), (3.0, "a", "purchase")], 5)
    ['a', 'b']
    """
    out: list[str] = []
    for _, item_id, _ in reversed(history):
        if item_id != skip and item_id not in out:
            out.append(item_id)
            if len(out) >= limit:
                break
    return out


FORGET = "forget"
"""The outcome of a learning-log entry that drops a customer from the recommender."""


_profile_encoder = msgspec.msgpack.Encoder()
_profile_decoder = msgspec.msgpack.Decoder(Profile)
_event_decoder = msgspec.msgpack.Decoder(LearningEvent)


def encode(record: msgspec.Struct) -> bytes:
    return _profile_encoder.encode(record)


class CorruptRecord(ValueError):
    """Stored bytes that do not decode as the record they should be (truncated, written
    by something else, bit rot). ``field`` names the request field that led to it.

    >>> decode_profile(b"\\x92garbage", "user_id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    engine.records.CorruptRecord: user_id: the stored profile is corrupt (...)
    """

    def __init__(self, field: str, kind: str, reason: str) -> None:
        self.field, self.kind = field, kind
        super().__init__(f"{field}: the stored {kind} is corrupt ({reason})")


def decode_profile(data: bytes, field: str = "user_id") -> Profile:
    try:
        profile = _profile_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise CorruptRecord(field, "profile", str(err)) from None
    for event_type, stats in profile.events.items():
        if isinstance(stats.recent, bytes) and len(stats.recent) % 16:
            raise CorruptRecord(field, "profile", f"events.{event_type}.recent is not "
                                "(timestamp, value) float64 pairs")
    for action_id, history in profile.contacts.items():
        if isinstance(history, ContactLog) and not _consistent(history):
            raise CorruptRecord(field, "profile", f"contacts.{action_id} does not have one "
                                "float64 time and one known kind per contact")
    if len(profile.event_ids) % 24:
        raise CorruptRecord(field, "profile", "event_ids is not (time, id, event) records "
                            "of 24 bytes")
    return profile


def decode_stored_profile(data: bytes | None) -> Profile | CorruptRecord | None:
    """A profile as stored (None: none), or the :class:`CorruptRecord` it is (a batch
    of reads goes on with the others)."""
    if data is None:
        return None
    try:
        return decode_profile(data)
    except CorruptRecord as err:
        return err


def _consistent(log: ContactLog) -> bool:
    """Whether every contact has a time and a code of a kind (at most 255 kinds)."""
    return (len(log.times) == 8 * len(log.codes) and len(log.kinds) < 256
            and not log.codes.translate(None, _CODES_BELOW[len(log.kinds)]))


_CODES_BELOW = [bytes(range(n)) for n in range(256)]
"""The codes of ``n`` kinds (what must be left of a log's codes once they are deleted:
nothing)."""


def _twin(struct: type[msgspec.Struct], name: str, *, array_like: bool, **types: Any) -> Any:
    """A twin of ``struct`` with the field types in ``types`` replaced, stored as an
    array (fields by position) or as a map of field names (how records were stored
    before session 13)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(struct):
        kind = types.get(f.name, f.type)
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, kind, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, kind, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, kind))
    return msgspec.defstruct(name, fields, omit_defaults=True, array_like=array_like)


_MapShownAction = _twin(ShownAction, "MapShownAction", array_like=False)
_MapDecisionRecord = _twin(DecisionRecord, "MapDecisionRecord", array_like=False,
                           actions=list[_MapShownAction])  # type: ignore[valid-type]
_StoredDecisionRecord = _twin(DecisionRecord, "StoredDecisionRecord", array_like=True,
                              features=dict[str, float] | tuple[bytes, list[float]])
"""A record as stored in the ``array`` and ``compact`` layouts: its features a map of
names to values, or ``(id of the names list, values in its order)``."""
_stored_decision_decoder = msgspec.msgpack.Decoder(_StoredDecisionRecord)
_map_decision_decoder = msgspec.msgpack.Decoder(_MapDecisionRecord)
_MSGPACK_MAPS = frozenset((*range(0x80, 0x90), 0xDE, 0xDF))  # fixmap, map 16, map 32


RECORD_LAYOUTS = ("compact", "array", "map")
"""How decision records are written: ``compact`` (fields by position, and a features'
names list that recurs by its id, the list stored once: :mod:`engine.feature_names`;
since session 15), ``array`` (fields by position, names in every record: what builds of
sessions 13 and 14 read) or ``map`` (field names too, what earlier builds read). The
last two are for a rolling upgrade, until no replica of an earlier build is left; all
three are read."""


def _flag_as_int(value: float) -> float:
    """0.0 and 1.0 as the integers 0 and 1: one byte in MessagePack where a float takes
    nine, decoded as the same floats (``-0.0`` stays a float). Segment flags and one-hot
    values are most of a record's features."""
    return 1 if value == 1.0 else 0 if value == 0.0 and math.copysign(1.0, value) > 0 else value


def _flags_as_ints(features: dict[str, float]) -> dict[str, float]:
    """``features`` with every 0.0 and 1.0 as an integer (:func:`_flag_as_int`).

    >>> _flags_as_ints({"segment:vip": 1.0, "segment:new": 0.0, "spend": 12.5, "x": -0.0})
    {'segment:vip': 1, 'segment:new': 0, 'spend': 12.5, 'x': -0.0}
    """
    return {k: (1 if v == 1.0 else 0 if v == 0.0 and math.copysign(1.0, v) > 0 else v)
            for k, v in features.items()}


def encode_decision(record: DecisionRecord, layout: str = "array") -> bytes:
    """A decision record as stored, its names written in it: ``array`` (also what
    ``compact`` writes without a names cache, :func:`encode_compact_decision`) or
    ``map`` (:data:`RECORD_LAYOUTS`), its feature flags as integers
    (:func:`_flags_as_ints`).

    >>> record = DecisionRecord("d1", "ann", "home", "web", "r1", 1.0,
    ...                         [ShownAction("offer", 1, 0.5, 0.1, 5.0)])
    >>> as_map = encode_decision(record, "map")
    >>> msgspec.msgpack.decode(as_map)["actions"][0]["action_id"]
    'offer'
    >>> decode_decision(as_map) == record and len(as_map) > len(encode_decision(record))
    True
    """
    if record.features:
        record = msgspec.structs.replace(record, features=_flags_as_ints(record.features))
    if layout != "map":
        return encode(record)
    return encode(_MapDecisionRecord(**{
        **msgspec.structs.asdict(record),
        "actions": [_MapShownAction(**msgspec.structs.asdict(a)) for a in record.actions]}))


def encode_compact_decision(record: DecisionRecord, names: FeatureNameSets
                            ) -> tuple[bytes, tuple[bytes, bytes] | None]:
    """A decision record in the ``compact`` layout, and the names list it refers to
    (its id and the list as stored), which the store must keep as long as the record;
    None when the record spells its names out (a list this process sees for the first
    time, :meth:`~engine.feature_names.FeatureNameSets.intern`).

    >>> names = FeatureNameSets()
    >>> record = DecisionRecord("d1", "ann", "home", "web", "r1", 1.0,
    ...                         [ShownAction("offer", 1, 0.5, 0.1, 5.0)],
    ...                         {"segment:vip": 1.0, "context.spend": 12.5})
    >>> first, none = encode_compact_decision(record, names)
    >>> data, (ref, blob) = encode_compact_decision(record, names)
    >>> none is None and len(data) < len(first) and decode_decision(data, names=names) == record
    True
    >>> decode_decision(data)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    engine.records.MissingFeatureNames: feature names ... are not held in this process
    """
    features = record.features
    interned = names.intern(tuple(features)) if features else None
    if interned is None:
        return encode_decision(record), None
    fields = msgspec.structs.astuple(record)
    values = [1 if v == 1.0 else 0 if v == 0.0 and math.copysign(1.0, v) > 0 else v
              for v in features.values()]  # (_flag_as_int, inline: a call per value costs)
    return encode(_StoredDecisionRecord(*fields[:7], (interned[0], values), *fields[8:])
                  ), interned


def encode_decision_update(record: DecisionRecord, original: bytes, layout: str) -> bytes:
    """``record`` after feedback (which changes its outcomes only), stored as the
    ``original`` bytes it was read from were when ``layout`` is ``compact``: a names
    list it referred to is still referred to (and kept as long as the record), names it
    spelled out are still spelled out. In ``layout`` itself otherwise.

    >>> names = FeatureNameSets()
    >>> record = DecisionRecord("d1", "ann", "home", "web", "r1", 1.0,
    ...                         [ShownAction("offer", 1, 0.5, 0.1, 5.0)], {"segment:vip": 1.0})
    >>> _ = encode_compact_decision(record, names)
    >>> data, interned = encode_compact_decision(record, names)
    >>> record.outcomes["offer"] = ["impression"]
    >>> after = encode_decision_update(record, data, "compact")
    >>> decode_decision(after, names=names) == record, len(after) < len(encode_decision(record))
    (True, True)
    """
    if layout == "compact" and original[:1] and original[0] not in _MSGPACK_MAPS:
        try:
            stored = _stored_decision_decoder.decode(original)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return encode_decision(record)
        features = stored.features  # as decoded: flags are floats again
        features = ((features[0], [_flag_as_int(v) for v in features[1]])
                    if isinstance(features, tuple) else _flags_as_ints(features))
        return encode(msgspec.structs.replace(stored, features=features,
                                              outcomes=record.outcomes))
    return encode_decision(record, layout)


class MissingFeatureNames(LookupError):
    """A ``compact`` record refers to a feature names list this process does not hold:
    the store reads the list (:meth:`~engine.feature_names.FeatureNameSets.learn`)
    and decodes the record again."""

    def __init__(self, ref: bytes) -> None:
        self.ref = ref
        super().__init__(f"feature names {ref.hex()} are not held in this process")


def encode_event(event: LearningEvent) -> bytes:
    """A learning-log entry as stored, its feature flags as integers
    (:func:`_flags_as_ints`; every build reads them as the same floats).

    >>> e = LearningEvent("d1", "offer", "click", 1.0, 1.0,
    ...                   features={"segment:vip": 1.0, "segment:new": 0.0, "spend": 3.5})
    >>> decode_event(encode_event(e)) == e, len(encode_event(e)) < len(encode(e)) - 15
    (True, True)
    """
    if event.features:
        event = msgspec.structs.replace(event, features=_flags_as_ints(event.features))
    return encode(event)


def decode_decision(data: bytes, field: str = "decision_id",
                    names: FeatureNameSets | None = None) -> DecisionRecord:
    """A stored decision record: an array (its features' names in it, or a names list
    by id, read from ``names``: :class:`MissingFeatureNames` when not held there), or a
    map as earlier builds stored it.

    >>> record = DecisionRecord("d1", "ann", "home", "web", "r1", 1.0,
    ...                         [ShownAction("offer", 1, 0.5, 0.1, 5.0)])
    >>> encode(record)[:1] == b"\\x9a"  # an array of its 10 fields, no field names
    True
    >>> old = msgspec.msgpack.encode({"decision_id": "d1", "user_id": "ann",
    ...     "placement": "home", "channel": "web", "revision": "r1", "decided_at": 1.0,
    ...     "actions": [{"action_id": "offer", "rank": 1, "score": 0.5,
    ...                  "propensity": 0.1, "value": 5.0}]})
    >>> decode_decision(old) == decode_decision(encode(record)) == record
    True

    A later build's record, with a field appended, reads as far as this build knows it
    (so a field added at the end needs no upgrade step):

    >>> newer = msgspec.msgpack.encode([*msgspec.msgpack.decode(encode(record)), "new"])
    >>> decode_decision(newer) == record
    True
    """
    try:
        if data[:1] and data[0] in _MSGPACK_MAPS:
            old = _map_decision_decoder.decode(data)
            return DecisionRecord(**{
                **msgspec.structs.asdict(old),
                "actions": [ShownAction(**msgspec.structs.asdict(a)) for a in old.actions]})
        stored = _stored_decision_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise CorruptRecord(field, "decision", str(err)) from None
    fields = msgspec.structs.astuple(stored)
    features = fields[7]
    if isinstance(features, tuple):
        ref, values = features
        held = names.names(ref) if names is not None else None
        if held is None:
            raise MissingFeatureNames(ref)
        if len(held) != len(values):
            raise CorruptRecord(field, "decision", f"{len(values)} feature values for "
                                                   f"{len(held)} names")
        features = dict(zip(held, values, strict=True))
    decision_id, user_id, placement, channel, revision, decided_at, actions, _, outcomes, \
        holdout = fields
    return DecisionRecord(decision_id, user_id, placement, channel, revision, decided_at,
                          actions, features, outcomes, holdout)


def decode_event(data: bytes) -> LearningEvent | None:
    """A learning-log entry; None (and no exception) for one that does not decode, so
    the log's consumers step over it instead of stopping at it."""
    try:
        return _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class LoggedAction(msgspec.Struct):
    action_id: str
    probability: float | None = None
    propensity: float | None = None


class LoggedDecision(msgspec.Struct):
    """The fields of a decision-log decision line that readers rely on."""

    decision_id: str
    user_id: str
    placement: str
    at: float
    actions: list[LoggedAction]
    kind: str = "decision"


class LoggedOutcome(msgspec.Struct):
    """The fields of a decision-log outcome line that readers rely on."""

    decision_id: str
    action_id: str
    outcome: str
    at: float
    kind: str = "outcome"


def sampled(decision_id: str, rate: float) -> bool:
    """Whether a decision is in a ``rate`` sample of decisions: chosen by a hash of its id
    alone (so its outcomes, reported to any process, follow it), independent of what was
    decided, so estimates from the sample (``arbiter replay``) stay unbiased.

    >>> sampled("0f3a", 1.0), sampled("0f3a", 0.0)
    (True, False)
    >>> sum(sampled(f"{k:032x}", 0.25) for k in range(10_000))
    2486
    """
    return rate >= 1.0 or zlib.crc32(decision_id.encode()) < rate * 4294967296.0


def is_log_entry(entry: object) -> bool:
    """Whether a parsed decision-log line has the shape its readers rely on.

    >>> is_log_entry({"kind": "outcome", "decision_id": "d", "action_id": "a",
    ...               "outcome": "click", "at": 1.0})
    True
    >>> is_log_entry({"kind": "decision", "decision_id": 7}), is_log_entry([1])
    (False, False)
    """
    if not isinstance(entry, dict):
        return False
    shape = {"decision": LoggedDecision, "outcome": LoggedOutcome}.get(entry.get("kind", ""))
    if shape is None:
        return False
    try:
        msgspec.convert(entry, shape)
    except msgspec.ValidationError:
        return False
    return True
