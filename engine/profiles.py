"""Pure functions that update a profile: behavioural events, traits, contacts.

Stores call these inside their atomic read-modify-write (a lock in memory, WATCH/
MULTI in Redis), so the aggregation rules live in one place.

>>> p = record_event(None, "u1", "purchase", 120.0, at=1000.0, traits={})
>>> p.events["purchase"].count, p.events["purchase"].total
(1, 120.0)
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping

from dsl.vocabulary import (
    CONTACT_RETENTION_SECONDS,
    EVENT_RETENTION_SECONDS,
    MAX_CONTACTS_PER_ACTION,
    MAX_EVENT_TYPES,
)
from engine.decide.send_time import hour_of_week
from engine.records import (
    AttrValue,
    ContactHistory,
    ContactLog,
    EventStats,
    Profile,
    recent_items,
)

MAX_RECENT_EVENTS = 1000
"""Per event type, the newest timestamps kept for windowed counts and sums."""
"""Windowed counts look back at most this far; all-time counts and totals are exact."""
MAX_ITEM_HISTORY = 100
"""The newest item interactions a profile keeps (recommendation seeds, exclusions)."""
HISTORY_SEEDS = 10
"""Distinct recent items a new interaction is learnt with (co-occurrence)."""


_FLOAT64 = struct.Struct("d")

ENGAGEMENTS = frozenset({"click", "conversion"})
"""Feedback outcomes that count as engagement for send-time optimisation (every
TrackEvent counts too)."""


def _engaged(profile: Profile, at: float) -> None:
    """One more engagement in ``at``'s hour of the week (at most 168 counters)."""
    h = hour_of_week(at)
    profile.engagement[h] = profile.engagement.get(h, 0.0) + 1.0


PACKED, PAIRS = "packed", "pairs"
PROFILE_LAYOUTS = (PACKED, PAIRS)
"""How histories are written: ``packed`` (this build's: an event type's recent history as
float64s, an action's contacts as a :class:`~engine.records.ContactLog`), or ``pairs``:
lists of tuples, as builds before session 17 read them (for a rolling upgrade: an older
build reads a packed history as a corrupt profile)."""


def recent_events(stats: EventStats) -> list[tuple[float, float]]:
    """An event type's recent (timestamp, value) pairs, oldest first, in either layout.

    >>> p = record_event(None, "u", "visit", 2.0, at=10.0, traits={})
    >>> p = record_event(p, "u", "visit", 1.0, at=5.0, traits={})
    >>> recent_events(p.events["visit"]), type(p.events["visit"].recent).__name__
    ([(5.0, 1.0), (10.0, 2.0)], 'bytes')
    """
    recent = stats.recent
    if isinstance(recent, bytes):
        packed = array("d", recent)
        return list(zip(packed[::2], packed[1::2], strict=True))
    return [(t, v) for t, v in recent]


def _with_event(recent: list[tuple[float, float]] | bytes, at: float, value: float,
                horizon: float, layout: str) -> list[tuple[float, float]] | bytes:
    """The history with (at, value) in its place (as ``insort`` places a pair: after equal
    pairs), without what is older than ``horizon`` or beyond MAX_RECENT_EVENTS."""
    packed = array("d")
    if isinstance(recent, bytes):
        packed.frombytes(recent)
    else:
        for pair in recent:
            packed.extend(pair)
    times = packed[::2]
    i = bisect_right(times, at)
    while i > 0 and times[i - 1] == at and packed[2 * i - 1] > value:
        i -= 1  # (equal times: ordered by value, as tuples are)
    packed[2 * i:2 * i] = array("d", (at, value))
    times = packed[::2]
    drop = max(bisect_left(times, horizon), len(times) - MAX_RECENT_EVENTS)
    if drop > 0:
        del packed[:2 * drop]
    if layout == PACKED:
        return packed.tobytes()
    return list(zip(packed[::2], packed[1::2], strict=True))


def _touch(profile: Profile, at: float) -> None:
    profile.first_seen = at if profile.first_seen is None else min(profile.first_seen, at)
    profile.last_seen = at if profile.last_seen is None else max(profile.last_seen, at)
    profile.version += 1


def record_event(
    profile: Profile | None,
    user_id: str,
    event_type: str,
    value: float,
    at: float,
    traits: Mapping[str, AttrValue],
    layout: str = PACKED,
) -> Profile:
    """The profile after one behavioural event (and any traits sent with it); its event
    history written in ``layout`` (:data:`PROFILE_LAYOUTS`)."""
    profile = profile if profile is not None else Profile(user_id=user_id)
    events = profile.events
    stats = events.get(event_type)
    if stats is None:
        if len(events) >= MAX_EVENT_TYPES:
            del events[min(events, key=lambda name: events[name].last_at)]
        stats = events[event_type] = EventStats(first_at=at, last_at=at)
    stats.count += 1
    stats.total += value
    stats.first_at = min(stats.first_at, at)
    stats.last_at = max(stats.last_at, at)
    stats.recent = _with_event(stats.recent, at, value,
                               stats.last_at - EVENT_RETENTION_SECONDS, layout)
    _set_traits(profile, traits)
    _engaged(profile, at)
    _touch(profile, at)
    return profile


def record_item(profile: Profile, item_id: str, event: str, at: float) -> list[str]:
    """Add an item interaction to the profile's history (bounded, in time order);
    returns the customer's previous distinct items, newest first (at most HISTORY_SEEDS)."""
    previous = recent_items(profile.items, HISTORY_SEEDS, skip=item_id)
    insort(profile.items, (at, item_id, event))
    horizon = profile.items[-1][0] - EVENT_RETENTION_SECONDS
    drop = 0
    while drop < len(profile.items) and profile.items[drop][0] < horizon:
        drop += 1
    drop = max(drop, len(profile.items) - MAX_ITEM_HISTORY)
    if drop:
        del profile.items[:drop]
    return previous


def _set_traits(profile: Profile, traits: Mapping[str, AttrValue]) -> None:
    for name, trait in traits.items():
        if trait is None:
            profile.attributes.pop(name, None)
        else:
            profile.attributes[name] = trait


def record_traits(profile: Profile | None, user_id: str, traits: Mapping[str, AttrValue],
                  at: float) -> Profile:
    """The profile with attributes set, without any behavioural event."""
    profile = profile if profile is not None else Profile(user_id=user_id)
    _set_traits(profile, traits)
    _touch(profile, at)
    return profile


def record_contact(profile: Profile | None, user_id: str, action_id: str, outcome: str,
                   at: float, channel: str, layout: str = PACKED) -> Profile:
    """The profile after an outcome of an action shown to it (for contact policies); the
    action's history written in ``layout`` (:data:`PROFILE_LAYOUTS`).

    >>> from engine.decide.contacts import contact_entries
    >>> p = record_contact(None, "u", "offer", "impression", 10.0, "web")
    >>> p = record_contact(p, "u", "offer", "click", 5.0, "web")
    >>> contact_entries(p.contacts["offer"]), type(p.contacts["offer"]).__name__
    ([(5.0, 'click', 'web'), (10.0, 'impression', 'web')], 'ContactLog')
    """
    profile = profile if profile is not None else Profile(user_id=user_id)
    if outcome in ENGAGEMENTS:
        _engaged(profile, at)
    horizon = at - CONTACT_RETENTION_SECONDS
    contacts = profile.contacts
    contacts[action_id] = _with_contact(contacts.get(action_id, []), at, (outcome, channel),
                                        horizon, layout)
    for stale in [a for a, history in contacts.items() if _newest(history) < horizon]:
        del contacts[stale]  # (an action not shown for longer than is kept: a past campaign)
    profile.version += 1
    return profile


def _newest(history: ContactHistory) -> float:
    """When the action's newest contact happened (-inf without any)."""
    if isinstance(history, ContactLog):
        times = history.times
        return _FLOAT64.unpack_from(times, len(times) - 8)[0] if times else -math.inf
    return history[-1][0] if history else -math.inf


def _with_contact(history: ContactHistory, at: float, kind: tuple[str, str],
                  horizon: float, layout: str) -> ContactHistory:
    """The history with a contact of ``kind`` (outcome, channel) at ``at`` in its place (as
    ``insort`` places a tuple: after equal ones), without what is older than ``horizon``
    or beyond MAX_CONTACTS_PER_ACTION; only the kinds still used are kept."""
    times = array("d")
    if isinstance(history, ContactLog):
        times.frombytes(history.times)
        codes, kinds = bytearray(history.codes), list(history.kinds)
    else:  # (only the newest can stay: at most MAX_CONTACTS_PER_ACTION kinds to code)
        history = history[-MAX_CONTACTS_PER_ACTION:]
        index: dict[tuple[str, str], int] = {}
        codes = bytearray(index.setdefault((o, c), len(index)) for _, o, c in history)
        times.extend(t for t, _, _ in history)
        kinds = list(index)
    code = kinds.index(kind) if kind in kinds else len(kinds)
    if code == len(kinds):
        kinds.append(kind)
    i = bisect_right(times, at)
    while i > 0 and times[i - 1] == at and kinds[codes[i - 1]] > kind:
        i -= 1
    times.insert(i, at)
    codes.insert(i, code)
    drop = max(bisect_left(times, horizon), len(times) - MAX_CONTACTS_PER_ACTION)
    if drop > 0:
        del times[:drop], codes[:drop]
    used = sorted(set(codes))
    if len(used) < len(kinds):  # (a kind no contact has any more: renumbered without it)
        kinds = [kinds[old] for old in used]
        table = bytearray(range(256))
        for new, old in enumerate(used):
            table[old] = new
        codes = codes.translate(table)
    if layout == PACKED:
        return ContactLog(times.tobytes(), bytes(codes), kinds)
    return [(t, *kinds[c]) for t, c in zip(times, codes, strict=True)]
