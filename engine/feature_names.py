"""Decision records' feature names, stored once per distinct list instead of in every
record (the ``compact`` record layout, :mod:`engine.records`).

A decision's features are a dict of names to numbers: the segment flags and context
values the placement's model reads, about 60% of a record's bytes when every record
spells its names out. The names of most decisions repeat (the same segments, the same
few context values), so a record can carry an id of its names list instead: 8 bytes of
BLAKE2b over the list as stored, so any process computes the same id with no
coordination, and the list, stored once under that id (by the store, with the record
that first refers to it), reads back as exactly those names.

:class:`FeatureNameSets` is one process's bounded cache of such lists. A list gets an id
the second time this process sees it: names that occur once (a context value unique to a
request) stay in their record, so they never cost a stored list each.

>>> sets = FeatureNameSets()
>>> names = ("segment:vip", "context.device=mobile")
>>> sets.intern(names) is None  # first sighting: stored in the record itself
True
>>> ref, blob = sets.intern(names)  # seen before: referred to by id, stored as blob
>>> len(ref), sets.names(ref) == names, names_id(blob) == ref
(8, True, True)
>>> FeatureNameSets().learn(ref, blob) == names  # another process reads it
True
>>> huge = tuple(f"context.page=/{i:04d}" + "x" * 100 for i in range(600))
>>> sets.intern(huge), sets.intern(huge)  # too long to keep: stays in its records
(None, None)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import msgspec

NAMES_ID_BYTES = 8
"""Bytes of a names list's id (collisions: about one in 10^19 for a pair of lists)."""

NAME_SETS_KEPT = 2048
"""Distinct names lists (and first sightings) one process remembers at most."""

NAME_CHARS_KEPT = 4_000_000
"""Characters of names the lists (and first sightings) one process remembers add up to
at most: the cache stays under ~30 MB whatever the lists (a few hundred KB for a
ruleset of tens of segments, 444 lists of a 300-segment ruleset's ~9,000 characters)."""

MAX_LIST_CHARS = 65_536
"""A names list longer than this (characters of its names) stays in its records."""

_encoder = msgspec.msgpack.Encoder()
_UNSEEN = object()
_decoder = msgspec.msgpack.Decoder(list[str])


def names_id(blob: bytes) -> bytes:
    """The id of a names list stored as ``blob`` (MessagePack of the list).

    >>> names_id(msgspec.msgpack.encode(["a", "b"])).hex()
    '609e247aed5392e0'
    """
    return hashlib.blake2b(blob, digest_size=NAMES_ID_BYTES).digest()


class FeatureNameSets:
    """A process's bounded cache of feature names lists by id (thread-safe).

    ``intern`` gives the id of a list seen before (None the first time); ``names``
    reads a known id; ``learn`` adds a list read from the store,
    checked against its id. Forgetting is safe: a list this cache no longer holds is
    stored (the store keeps it as long as any record that refers to it) and read again.
    """

    def __init__(self, size: int = NAME_SETS_KEPT, chars: int = NAME_CHARS_KEPT) -> None:
        self._size, self._chars_kept = size, chars
        self._id_chars = self._list_chars = 0  # characters of names held, each table
        self._ids: OrderedDict[tuple[str, ...], bytes | None] = OrderedDict()
        self._lists: OrderedDict[bytes, tuple[tuple[str, ...], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def intern(self, names: tuple[str, ...]) -> tuple[bytes, bytes] | None:
        """The id of ``names`` and the list as stored, if this process has seen the list
        before; else None (and the sighting is remembered)."""
        ref = self._ids.get(names)  # the common case, without the lock (dict reads are atomic)
        if ref is not None:
            held = self._lists.get(ref)
            if held is not None:
                return ref, held[1]
        if _chars(names) > MAX_LIST_CHARS:
            return None
        with self._lock:
            if self._ids.get(names, _UNSEEN) is _UNSEEN:  # remember the sighting only
                self._remember_id(names, None)
                return None
            blob = _encoder.encode(list(names))
            ref = names_id(blob)
            self._remember_id(names, ref)
            self._remember_list(ref, names, blob)
            return ref, blob

    def names(self, ref: bytes) -> tuple[str, ...] | None:
        """The names list of ``ref``, if this process holds it."""
        with self._lock:
            known = self._lists.get(ref)
            return known[0] if known is not None else None

    def learn(self, ref: bytes, blob: bytes) -> tuple[str, ...]:
        """Hold the list ``blob`` read from the store for ``ref``; ValueError if it is
        not that list (damaged or written by something else)."""
        if names_id(blob) != ref:
            raise ValueError(f"the stored feature names {ref.hex()} do not match their id")
        try:
            names = tuple(_decoder.decode(blob))
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise ValueError(f"the stored feature names {ref.hex()} do not decode: {err}"
                             ) from None
        with self._lock:
            self._remember_id(names, ref)
            self._remember_list(ref, names, blob)
        return names

    def __len__(self) -> int:
        return len(self._lists)

    # first in, first out: a list in use that was dropped is spelled out in one record,
    # then has its id again (cheaper than reordering on every use)
    def _remember_id(self, names: tuple[str, ...], ref: bytes | None) -> None:
        if names not in self._ids:
            self._id_chars += _chars(names)
        self._ids[names] = ref
        self._ids.move_to_end(names)
        while len(self._ids) > self._size or self._id_chars > self._chars_kept:
            dropped, _ = self._ids.popitem(last=False)
            self._id_chars -= _chars(dropped)

    def _remember_list(self, ref: bytes, names: tuple[str, ...], blob: bytes) -> None:
        if ref not in self._lists:
            self._list_chars += _chars(names)
        self._lists[ref] = (names, blob)
        self._lists.move_to_end(ref)
        while len(self._lists) > self._size or self._list_chars > self._chars_kept:
            _, (dropped, _) = self._lists.popitem(last=False)
            self._list_chars -= _chars(dropped)


def _chars(names: tuple[str, ...]) -> int:
    return sum(map(len, names))
