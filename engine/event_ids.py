"""The TrackEvent ids a profile remembers, so that a retried event is applied once.

A client names each event with an ``event_id`` (Segment's ``messageId``); a profile
keeps the ids it received in the last :data:`EVENT_ID_SECONDS`, at most
:data:`MAX_EVENT_IDS`, packed (24 bytes each: the time received, a digest of the id and
a digest of the event), in the same compare-and-set write as the event itself: a retry
is recognised however the first attempt ended (a timeout after the write, another
replica), and nothing else is stored for it.

>>> from engine.records import Profile
>>> p = Profile(user_id="u")
>>> first = event_digests("e-1", "purchase", 9.5, "", {})
>>> seen(p, first, 1000.0) is None
True
>>> remember(p, first, received_at=1000.0)
>>> seen(p, first, 1001.0), seen(p, event_digests("e-1", "purchase", 12.0, "", {}), 1001.0)
(True, False)
>>> seen(p, first, 1000.0 + EVENT_ID_SECONDS + 1) is None  # forgotten after a day
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import msgspec

from engine.records import AttrValue, Profile

EVENT_ID_SECONDS = 86400.0
"""How long a TrackEvent's ``event_id`` is remembered: a retry within it is a duplicate."""
MAX_EVENT_IDS = 1000
"""Event ids a profile remembers at most (the newest; about 24 KB at the bound)."""
_RECORD = struct.Struct("<d8s8s")
_SIZE = _RECORD.size


def event_digests(event_id: str, event_type: str, value: float, item_id: str,
                  traits: Mapping[str, AttrValue]) -> tuple[bytes, bytes]:
    """8-byte digests of the id and of what the event says (its type, value, item and
    traits, maps in any order; not its timestamp, which a retry may legitimately
    re-stamp)."""
    said = msgspec.msgpack.encode((event_type, value, item_id, traits), order="sorted")
    return (hashlib.blake2b(event_id.encode(), digest_size=8).digest(),
            hashlib.blake2b(said, digest_size=8).digest())


def seen(profile: Profile | None, digests: tuple[bytes, bytes],
         received_at: float) -> bool | None:
    """None: the id is new (or was received more than :data:`EVENT_ID_SECONDS` before
    ``received_at``); True: it was received for this same event; False: for another
    event (another type, value, item or traits)."""
    if profile is None or not profile.event_ids:
        return None
    ids, (wanted, said) = profile.event_ids, digests
    at = ids.find(wanted, 8)
    while at != -1:
        if at % _SIZE == 8 and (  # an id, not bytes across two fields; still remembered
                _RECORD.unpack_from(ids, at - 8)[0] >= received_at - EVENT_ID_SECONDS):
            return ids[at + 8:at + 16] == said
        at = ids.find(wanted, at + 1)
    return None


def remember(profile: Profile, digests: tuple[bytes, bytes], received_at: float) -> None:
    """Add the id, dropping those older than :data:`EVENT_ID_SECONDS` and the oldest
    beyond :data:`MAX_EVENT_IDS`."""
    ids = profile.event_ids
    start = max(0, len(ids) - _SIZE * (MAX_EVENT_IDS - 1))
    horizon = received_at - EVENT_ID_SECONDS
    while start < len(ids) and _RECORD.unpack_from(ids, start)[0] < horizon:
        start += _SIZE
    profile.event_ids = ids[start:] + _RECORD.pack(received_at, *digests)
