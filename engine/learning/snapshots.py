"""Model snapshots, signed: a replica loads only what a holder of the key wrote.

Snapshots are pickles (River models are Python objects), and unpickling runs code, so
anyone who can write to the store could otherwise run code in every replica. Each
snapshot is signed with HMAC-SHA256 under a key the operator configures
(``ARBITER_SNAPSHOT_KEY``), over the log offset it was taken at and the pickle; a
snapshot without a valid signature is refused before it is unpickled.

>>> signed = sign(b"secret", "1-0", b"models")
>>> verify(b"secret", "1-0", signed)
b'models'
>>> verify(b"other", "1-0", signed)
Traceback (most recent call last):
...
engine.learning.snapshots.SnapshotRejected: snapshot signature does not match the key
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"ARBS3"
"""Marks a signed snapshot: MAGIC, a 32-byte HMAC-SHA256, the pickle. Format 2 (session
16) holds a score's waiting customers as tuples, format 3 (session 17) the predictions
awaiting their final label too; a build before either would load them and then fail on
them at its next learning step: such a build finds no magic it knows, refuses the
snapshot at load and relearns from the log, as for any snapshot it cannot use."""
READABLE = (MAGIC, b"ARBS2", b"ARBS1")
"""Formats this build loads (older formats' objects are converted on load or read as
they are)."""


class SnapshotRejected(ValueError):
    """A snapshot that is unsigned, or signed with another key, or altered."""


def _mac(key: bytes, offset: str, blob: bytes) -> bytes:
    return hmac.new(key, offset.encode() + b"\0" + blob, hashlib.sha256).digest()


def sign(key: bytes, offset: str, blob: bytes) -> bytes:
    """The blob as stored: MAGIC, its MAC over (offset, blob), the blob."""
    return MAGIC + _mac(key, offset, blob) + blob


def verify(key: bytes, offset: str, stored: bytes) -> bytes:
    """The blob, if ``stored`` was signed with ``key`` at ``offset``; else raises."""
    magic = stored[:len(MAGIC)]
    if magic not in READABLE:
        raise SnapshotRejected("snapshot is not signed (or in a format this build does "
                               "not know)")
    mac, blob = stored[len(magic):len(magic) + 32], stored[len(magic) + 32:]
    if not hmac.compare_digest(mac, _mac(key, offset, blob)):
        raise SnapshotRejected("snapshot signature does not match the key")
    return blob
