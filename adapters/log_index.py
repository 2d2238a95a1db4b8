"""Which stretches of a decision log may hold a user's lines, so that erasing a user
reads those stretches and not the whole file.

The log is cut into blocks of about :data:`BLOCK_BYTES` of whole lines as it is written;
each block keeps a Bloom filter of the pseudonyms (:func:`~engine.records.pseudonym`)
of the users its lines are about (:data:`FILTER_BYTES`: about 0.4% of what it indexes;
about one block in three thousand answers "maybe" for a user it does not hold). A forget then
reads the blocks whose filter holds one of its users, the block being filled and what is
not indexed yet (what the file held before this process opened it is indexed a block
per turn of the writer). Pseudonyms, not ids: other processes' forgets reach this one as
pseudonyms.

>>> from engine.records import pseudonym
>>> index = BlockIndex(indexed_from=0, block_bytes=100)
>>> index.add("ann"); index.written(120)          # a block of 120 bytes about ann
>>> index.add("carl"); index.written(240)         # one about carl
>>> index.add("bob"); index.written(270)          # the block being filled: bob's
>>> index.ranges({pseudonym("ann")})              # (and what is being filled)
[(0, 120), (240, 270)]
>>> index.ranges({pseudonym("dora")})             # (a few blocks in 10,000 say "maybe")
[(240, 270)]
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Collection, Iterable
from pathlib import Path

from engine.records import pseudonym

BLOCK_BYTES = 1 << 20
"""Lines written before a block is sealed with its filter."""
FILTER_BYTES = 4096
"""A block's Bloom filter (32,768 bits, seven per user: ~0.03% false positives at the
~1,700 users a block of 590-byte lines can hold; with 16,384 bits and three per user it
was ~2%, so a forget read a fiftieth of the log besides its user's blocks)."""
HASHES = 7
"""Bits a user sets in a block's filter (positions ``h1 + i * h2``, from the pseudonym's
two halves)."""
MAX_BLOCKS = 1 << 16
"""Sealed blocks kept (64 GB of log, 256 MB of filters); past it the oldest half is
merged into the unindexed stretch, which a forget reads whole: rotate the log long
before."""
_USER = re.compile(rb'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_PSEUDONYM = re.compile(r"[0-9a-f]{16}")


def _bits(hashed: str, size: int) -> tuple[int, ...]:
    """The filter's HASHES bit positions for a pseudonym (16 hex digits): double hashing
    of its two 32-bit halves (Kirsch and Mitzenmacher).

    >>> _bits("00000003" "00000002", 1000)
    (2, 5, 8, 11, 14, 17, 20)
    """
    value = int(hashed, 16)
    first, step = value & 0xFFFFFFFF, (value >> 32) | 1
    return tuple((first + i * step) % size for i in range(HASHES))


class BlockIndex:
    """The blocks of one open decision-log file (its writer's thread alone uses it).

    The file is ``[0, indexed_from)``, what it held when this process opened it, then the
    lines this process wrote. The first part is indexed a block at a time in the
    writer's spare turns (:meth:`index_some`); until then a forget reads what of it is
    not yet indexed whole, as it read the whole file before."""

    def __init__(self, indexed_from: int, block_bytes: int | None = None,
                 filter_bytes: int = FILTER_BYTES) -> None:
        self.indexed_from = indexed_from
        """Where this process's own lines begin (what was before is indexed by
        :meth:`index_some`)."""
        self._block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self._size = filter_bytes * 8
        self._prefix_at = 0  # what was before: indexed up to here, in these blocks
        self._pstarts = array("q")
        self._pfilters: list[bytes] = []
        self._indexing = indexed_from > 0  # index_some has more to do
        self._starts = array("q")  # this process's sealed blocks: start offsets (each ends
        self._filters: list[bytes] = []  # at the next's start, the last at ``_start``)
        self._start = self._end = indexed_from  # the block being filled
        self._filter = bytearray(filter_bytes)
        self._seen: dict[str, None] = {}  # users already in the block being filled
        self._whole = False  # the block being filled has a line about nobody known

    @property
    def end(self) -> int:
        """Where the lines indexed end (the file's size when nothing else wrote to it)."""
        return self._end

    @property
    def unindexed(self) -> int:
        """Bytes of what the file held before that are still to be indexed."""
        return self.indexed_from - self._prefix_at if self._indexing else 0

    def add(self, user_id: object) -> None:
        """A line about ``user_id`` is going into the block being filled."""
        if not isinstance(user_id, str):
            self._whole = True  # (read whenever anyone is forgotten)
            return
        if user_id in self._seen:
            return
        self._seen[user_id] = None
        self._set(self._filter, pseudonym(user_id))

    def _set(self, bits: bytearray, hashed: str) -> None:
        for bit in _bits(hashed, self._size):
            bits[bit >> 3] |= 1 << (bit & 7)

    def written(self, end: int) -> None:
        """The lines added so far are in the file, up to offset ``end``."""
        self._end = end
        if end - self._start >= self._block_bytes:
            self._seal()

    def _seal(self) -> None:
        self._starts.append(self._start)
        self._filters.append(bytes(b"\xff" * len(self._filter)) if self._whole
                             else bytes(self._filter))
        self._start = self._end
        self._filter = bytearray(len(self._filter))
        self._seen.clear()
        self._whole = False
        if len(self._filters) > MAX_BLOCKS:  # the oldest half, and what was before: read
            keep = len(self._filters) // 2  # whole by a forget from now on
            self.indexed_from = self._starts[keep]
            self._prefix_at, self._pstarts, self._pfilters = 0, array("q"), []
            self._indexing = False
            del self._starts[:keep], self._filters[:keep]

    def index_some(self, path: Path) -> None:
        """Index the next block of what the file held before this process opened it
        (about a block of whole lines: the users they name), if any is left. A block
        with a line that names nobody (an outcome of a build before session 18) is read
        by every forget."""
        if not self._indexing:
            return
        with path.open("rb") as source:
            source.seek(self._prefix_at)
            data = b""
            while True:  # (a line longer than a block: read on to its end)
                more = source.read(min(self._block_bytes,
                                       self.indexed_from - self._prefix_at - len(data)))
                data += more
                end = data.rfind(b"\n") + 1
                if not more or end or self._prefix_at + len(data) >= self.indexed_from:
                    break
        if not data:  # (the file is shorter than it was: the rest stays unindexed)
            self._indexing = False
            return
        if self._prefix_at + len(data) >= self.indexed_from or not end:
            end = len(data)  # (the end of what was there: a torn line ends it too)
        named = _USER.findall(data, 0, end)
        bits = bytearray(len(self._filter))
        lines = data.count(b"\n", 0, end) + (data[end - 1:end] != b"\n")
        if len(named) < lines:  # a line about nobody known
            bits = bytearray(b"\xff" * len(bits))
        else:
            for spelt in set(named):
                self._set(bits, pseudonym(_unescaped(spelt)))
        self._pstarts.append(self._prefix_at)
        self._pfilters.append(bytes(bits))
        self._prefix_at += end
        self._indexing = self._prefix_at < self.indexed_from

    def stop_indexing(self) -> None:
        """Leave what is not indexed yet as it is (read whole by every forget)."""
        self._indexing = False

    def ranges(self, pseudonyms: Collection[str]) -> list[tuple[int, int]]:
        """The stretches (start, end) that may hold lines about these users, merged:
        the blocks whose filter holds one of them, what is not indexed, and the block
        being filled."""
        wanted = [_bits(hashed, self._size) for hashed in pseudonyms
                  if _PSEUDONYM.fullmatch(hashed)]  # (nothing else names a line)
        prefix_at = self._prefix_at
        found: list[tuple[int, int]] = []
        for starts, filters, last in ((self._pstarts, self._pfilters, prefix_at),
                                      (self._starts, self._filters, self._start)):
            ends = [*starts[1:], last] if starts else []
            for start, end, bits in zip(starts, ends, filters, strict=True):
                if any(all(bits[b >> 3] >> (b & 7) & 1 for b in positions)
                       for positions in wanted):
                    found.append((start, end))
        if self.indexed_from > prefix_at:
            found.append((prefix_at, self.indexed_from))
        if self._end > self._start:
            found.append((self._start, self._end))
        return _merged(found)


def _unescaped(spelt: bytes) -> str:
    """A user id as a line spells it (JSON-escaped) -> the id."""
    import json

    if b"\\" not in spelt:
        return spelt.decode("utf-8", "replace")
    try:
        value = json.loads(b'"' + spelt + b'"')
    except ValueError:
        return spelt.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent or overlapping stretches as one.

    >>> _merged([(0, 10), (10, 20), (30, 40)])
    [(0, 20), (30, 40)]
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out
