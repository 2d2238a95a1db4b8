"""The ids listed under one category or tag of the catalogue, in the catalogue's order,
changed without copying them: what the catalogue's content index holds per key, read
only at its two ends.

Each id has a rank, its place in the catalogue's order (a number that only grows, never
reused while the catalogue lives: :class:`Ranks`).
The members are the ids of the last fold, in rank order and shared between versions,
minus those gone since, plus those added since (kept sorted by rank: a new item ranks
last, a re-categorised one keeps its rank, so it can fall anywhere); the changes are
folded into a new list once there are more than about the square root of the members.

>>> ranks = {"a": 0, "b": 1, "c": 5, "d": 3, "e": 9}
>>> one = RankedMembers(("a", "b", "c"), ranks)
>>> two = one.changed(ranks, removed=["b"], added=["d", "e"])
>>> list(two), len(two), list(one)
(['a', 'd', 'c', 'e'], 4, ['a', 'b', 'c'])
>>> two.ends(1)
('a', 'e')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from heapq import merge
from itertools import islice
from math import isqrt
from threading import Lock

FOLD_AT_LEAST = 64
"""Changes a key's members carry before they are folded (at least; else about the
square root of the members)."""

_COUNTING = Lock()


class Ranks(dict[str, int]):
    """Each item's rank: its place in the catalogue's items as built (counted the first
    time one is asked, so a catalogue whose indexes never change does not pay for a map
    of every item: a quarter of a second and ~60 MB at a million items), then the ranks
    handed to items added since, in turn. Shared by the catalogues made from one build by
    changes in turn: a rank is never handed twice, and an item's changes only when it
    comes back after a removal (a new rank, last; a catalogue made before, while still
    read, may then put that item's neighbours at its ends oddly). A dict, so that a
    lookup costs a dict's.

    >>> ranks = Ranks({"x": 1, "y": 2})
    >>> ranks["y"], ranks.hand("z"), ranks.handed
    (1, 2, 3)
    """

    __slots__ = ("_keys", "handed")

    def __init__(self, keys: Mapping[str, object]) -> None:
        super().__init__()
        self._keys: Mapping[str, object] | None = keys  # (the items as built; not changed)
        self.handed = len(keys)  # ranks handed out so far: the next one

    def _count(self) -> None:
        with _COUNTING:  # (one count, never one made over a rank just handed)
            keys = self._keys
            if keys is not None:
                self.update(zip(keys, range(len(keys)), strict=True))
                self._keys = None  # (the items as built may go once folded away)

    def __missing__(self, key: str) -> int:
        if self._keys is not None:
            self._count()
            found = dict.get(self, key)
            if found is not None:
                return found
        raise KeyError(key)

    def hand(self, item_id: str) -> int:
        """A rank for a new item, after every other (one writer: the catalogue's keeper)."""
        if self._keys is not None:
            self._count()
        rank = self[item_id] = self.handed
        self.handed += 1
        return rank


class RankedMembers:
    """Ids in rank order (immutable; :meth:`changed` makes another)."""

    __slots__ = ("_added", "_ends", "_gone", "_ids", "_len", "_rank_of")

    def __init__(self, ids: Sequence[str], rank_of: Mapping[str, int],
                 gone: frozenset[str] = frozenset(),
                 added: tuple[tuple[int, str], ...] = ()) -> None:
        self._ids = ids  # in rank order; shared between versions, never changed
        self._rank_of = rank_of  # the rank of each of ids (and perhaps of others)
        self._gone, self._added = gone, added  # (gone: some of ids; added: sorted pairs)
        self._len = len(ids) - len(gone) + len(added)
        self._ends: tuple[int, tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return self._in_order()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RankedMembers):
            return NotImplemented
        return list(self) == list(other)  # (the same ids in the same order: ranks are
        # numbers that only order them)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RankedMembers({list(self)!r})"

    def _in_order(self, backwards: bool = False) -> Iterator[str]:
        gone, ids = self._gone, self._ids
        kept: Iterator[str] = reversed(ids) if backwards else iter(ids)
        if gone:
            kept = (item_id for item_id in kept if item_id not in gone)
        if not self._added:
            return kept
        rank_of = self._rank_of
        added = reversed(self._added) if backwards else iter(self._added)
        pairs = merge(((rank_of[item_id], item_id) for item_id in kept), added,
                      reverse=backwards)
        return (item_id for _, item_id in pairs)

    def ends(self, each: int) -> tuple[str, ...]:
        """Every member when there are at most ``2 * each + 1``, else the first ``each``
        and the last ``each`` (remembered: a decision reads them, a change makes new
        members)."""
        if self._ends is not None and self._ends[0] == each:
            return self._ends[1]
        if self._len <= 2 * each + 1:
            found = tuple(self)
        else:
            back = list(islice(self._in_order(backwards=True), each))
            found = (*islice(self._in_order(), each), *reversed(back))
        self._ends = (each, found)
        return found

    def changed(self, ranks: Mapping[str, int], removed: Iterable[str] = (),
                added: Iterable[str] = ()) -> RankedMembers | None:
        """These members without ``removed`` (ids that are members) and with ``added``
        (ids that are not), by their ``ranks`` (the catalogue's: every member's, as it is
        now: an id put back may have a new one); None when none is left."""
        gone, pending = set(self._gone), list(self._added)
        late = {item_id for _, item_id in pending}
        taken = set(removed)
        if taken & late:  # (one pass, however many: a batch takes 10,000 items out)
            pending = [pair for pair in pending if pair[1] not in taken]
        gone.update(taken - late)
        more = [(ranks[item_id], item_id) for item_id in added]  # (one taken out of the
        if more:  # shared ids and put back comes after them, or goes where its rank says)
            pending.extend(more)
            pending.sort()  # (ranks are unique: ids never compared)
        if len(self._ids) - len(gone) + len(pending) == 0:
            return None
        if pending and self._ids:  # (merging reads the ranks of ids: Ranks counts them
            self._rank_of[self._ids[0]]  # here, off the decisions' loop)
        if len(gone) + len(pending) <= max(FOLD_AT_LEAST, isqrt(len(self._ids))):
            return RankedMembers(self._ids, self._rank_of, frozenset(gone), tuple(pending))
        return RankedMembers(_folded(self._ids, gone, pending, ranks), ranks)


def _folded(ids: Sequence[str], gone: set[str], added: list[tuple[int, str]],
            ranks: Mapping[str, int]) -> list[str]:
    """``ids`` without ``gone`` and with ``added`` (sorted ``(rank, id)``), in rank order:
    a list copied and extended when every added id ranks after them (new items), else
    sorted by rank (two sorted runs: merged in linear time by the sort).

    >>> _folded(["a", "b"], {"a"}, [(7, "c")], {"a": 0, "b": 1, "c": 7})
    ['b', 'c']
    >>> _folded(["a", "b"], set(), [(0, "c")], {"a": 1, "b": 2, "c": 0})
    ['c', 'a', 'b']
    """
    kept = [item_id for item_id in ids if item_id not in gone] if gone else list(ids)
    if not kept or not added or added[0][0] > ranks[kept[-1]]:
        return kept + [item_id for _, item_id in added]
    pairs = [(ranks[item_id], item_id) for item_id in kept]
    pairs.extend(added)
    pairs.sort()
    return [item_id for _, item_id in pairs]
