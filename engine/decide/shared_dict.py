"""A read-only dict changed without copying it: the dict it came from, shared, plus the
changes made since, folded into a new dict once they are about the square root of its
size. What the served catalogue's items, ranks and indexes are made of, so that a change
costs O(√n) amortised, not a copy of n entries.

>>> one = SharedDict({"a": 1, "b": 2})
>>> two = one.changed({"b": None, "c": 3, "a": 4})
>>> list(two.items()), "b" in two, len(two), list(one.items())
([('a', 4), ('c', 3)], False, 2, [('a', 1), ('b', 2)])
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterator, Mapping
from math import isqrt
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FOLD_AT_LEAST = 64
"""Changes a dict carries beside the one it shares before they are folded into a new one
(at least; else about the square root of its entries)."""

_MISSING: Any = object()


class SharedDict(Mapping[K, V], Generic[K, V]):
    """Entries by key (immutable): a dict shared with earlier versions plus the changes
    made since (replaced or new entries; None for a removed one), which a change copies
    and which are folded into a new dict once there are more than about the square root
    of the entries. Iterated in a dict's order: the shared dict's (a replaced entry keeps
    its place), then keys that were not in it, in the order they came, and those moved
    last. A lookup costs one more dict probe than a dict's.
    """

    __slots__ = ("_added", "_base", "_len", "_moved", "_over")

    def __init__(self, base: Mapping[K, V], over: dict[K, V | None] | None = None,
                 added: tuple[K, ...] = (), length: int | None = None,
                 moved: frozenset[K] = frozenset()) -> None:
        self._base = base  # never changed once made
        self._over: dict[K, V | None] = {} if over is None else over
        self._added = added  # keys after the base's, in order (new, or moved last)
        self._moved = moved  # keys of the base moved last (their place there skipped)
        self._len = len(base) if length is None else length

    def get(self, key: K, default: Any = None) -> Any:
        found = self._over.get(key, _MISSING)
        if found is _MISSING:
            return self._base.get(key, default)
        return default if found is None else found

    def __getitem__(self, key: K) -> V:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        try:
            return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]
        except TypeError:  # (unhashable: not a key)
            return False

    def __iter__(self) -> Iterator[K]:
        over, moved = self._over, self._moved
        if not over:
            yield from self._base
            return
        for key in self._base:
            if over.get(key, _MISSING) is not None and key not in moved:
                yield key
        for key in self._added:
            if over.get(key) is not None:
                yield key

    def __len__(self) -> int:
        return self._len

    def knows(self, key: K) -> bool:
        """Whether ``key`` is held, or was removed since the last fold (set again without
        being moved last, it keeps its place).

        >>> SharedDict({"a": 1}).changed({"a": None}).knows("a")
        True
        """
        return key in self._over or key in self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"

    def changed(self, delta: Mapping[K, V | None], last: Collection[K] = ()
                ) -> SharedDict[K, V]:
        """These entries with ``delta`` applied (None: removed); a key not held before
        goes last, one removed and set again keeps its place unless it is in ``last``
        (set by ``delta``: moved after every other).

        >>> one = SharedDict({"a": 1, "b": 2}).changed({"a": None})
        >>> list(one.changed({"a": 3}).items()), list(one.changed({"a": 3}, last={"a"}))
        ([('a', 3), ('b', 2)], ['b', 'a'])
        """
        base, over, length = self._base, dict(self._over), self._len
        going, moved = set(last), set(self._moved)
        added = [key for key in self._added if key not in going] if going else list(
            self._added)  # (the keys moving last: appended again below, in delta's order)
        for key, value in delta.items():
            held = over[key] if key in over else base.get(key)
            if value is None:
                if held is not None:
                    length -= 1
                    over[key] = None
                continue
            if held is None:
                length += 1
            if key in going:  # (after what came before it in delta, and before the rest)
                added.append(key)
                if key in base:
                    moved.add(key)
            elif held is None and key not in base and key not in over:
                added.append(key)
            over[key] = value
        if len(over) <= max(FOLD_AT_LEAST, isqrt(len(base))):
            return type(self)(base, over, tuple(added), length, frozenset(moved))
        folded = dict(base)  # (replaced entries in place; removed ones, and those moved
        for key, value in over.items():  # last, taken out; then what comes after, in
            if value is None or key in moved:  # its order)
                folded.pop(key, None)
            elif key in folded:
                folded[key] = value
        for key in added:
            value = over.get(key)
            if value is not None:
                folded[key] = value
        return type(self)(folded)
