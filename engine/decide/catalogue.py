"""The item catalogue as decisions read it: the ruleset's file, then the changes made
over gRPC (shared by replicas through the store), with content indexes.

Content similarity uses two conventional attributes when the items block declares
them: ``category`` (a string) and ``tags`` (a list). Each index is built once per
catalogue version, so a decision looks items up, never scans them.

>>> cat = Catalogue.build([{"id": "a", "category": "shoes"}, {"id": "b", "category": "shoes"},
...                        {"id": "c", "category": "hats"}], {})
>>> cat.similar("a")
[('b', 1.0)]
>>> cat = cat.with_changes({"b": None, "d": {"id": "d", "category": "shoes"}}, 2)
>>> sorted(cat.items), cat.similar("a")
(['a', 'c', 'd'], [('d', 1.0)])
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from math import isqrt
from typing import Any

import msgspec

PER_CATEGORY = 20
"""Items of a category (or a tag) a seed item contributes, at most."""
TAG_SHARE = 0.5
"""Similarity of items sharing a tag but not the category."""
FOLD_AT_LEAST = 64
"""Changes a catalogue's items carry beside their shared dict before they are folded
into a new one (at least; else about the square root of the items)."""

_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_encoder = msgspec.msgpack.Encoder()


def encode_item(item: Mapping[str, Any]) -> bytes:
    return _encoder.encode(dict(item))


def decode_item(data: bytes) -> dict[str, Any] | None:
    """An item as stored; None for a removed one (empty) or one that does not decode."""
    if not data:
        return None
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


Item = Mapping[str, Any]
_MISSING: Any = object()


class CatalogueItems(Mapping[str, Item]):
    """Items by id (immutable): a dict shared with earlier catalogues plus the changes
    made since (replaced or new items; None for a removed one), which a change copies and
    which are folded into a new dict once there are more than about the square root of
    the items. A change then costs O(√items) amortised, not a copy of every item (a
    million items: ~35 ms a change); a lookup one more dict probe.

    >>> items = CatalogueItems({"a": {"id": "a"}, "b": {"id": "b"}})
    >>> more = items.changed({"b": None, "c": {"id": "c"}, "a": {"id": "a", "v": 2}})
    >>> list(more), more["a"]["v"], "b" in more, len(more), list(items)
    (['a', 'c'], 2, False, 2, ['a', 'b'])
    """

    __slots__ = ("_added", "_base", "_len", "_over")

    def __init__(self, base: dict[str, Item], over: dict[str, Item | None] | None = None,
                 added: tuple[str, ...] = (), length: int | None = None) -> None:
        self._base = base  # never changed once made
        self._over: dict[str, Item | None] = {} if over is None else over
        self._added = added  # ids not in the base, in the order they came (build's order)
        self._len = len(base) if length is None else length

    def get(self, key: str, default: Any = None) -> Any:
        found = self._over.get(key, _MISSING)
        if found is _MISSING:
            return self._base.get(key, default)
        return default if found is None else found

    def __getitem__(self, key: str) -> Item:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        over = self._over
        if not over:
            yield from self._base
            return
        for item_id in self._base:
            if over.get(item_id, _MISSING) is not None:
                yield item_id
        for item_id in self._added:
            if over.get(item_id) is not None:
                yield item_id

    def __len__(self) -> int:
        return self._len

    def changed(self, delta: Mapping[str, Item | None]) -> CatalogueItems:
        """These items with ``delta`` applied (None: removed); an id not held before goes
        last."""
        over, added, length = dict(self._over), list(self._added), self._len
        for item_id, item in delta.items():
            held = over[item_id] if item_id in over else self._base.get(item_id)
            if item is None:
                if held is not None:
                    length -= 1
                    over[item_id] = None
                continue
            if held is None:
                length += 1
                if item_id not in self._base and item_id not in over:
                    added.append(item_id)
            over[item_id] = item
        if len(over) <= max(FOLD_AT_LEAST, isqrt(len(self._base))):
            return CatalogueItems(self._base, over, tuple(added), length)
        folded = dict(self._base)  # (in place: replaced items keep their place, new ones
        folded.update((k, v) for k, v in over.items() if v is not None)  # go last, in the
        for item_id in [k for k, v in over.items() if v is None]:  # order they came)
            folded.pop(item_id, None)
        return CatalogueItems(folded)


class Catalogue:
    """Items by id, and the items of each category and tag (immutable: changes make a new
    catalogue, swapped in by reference)."""

    def __init__(self, base: tuple[Mapping[str, Any], ...], items: dict[str, Mapping[str, Any]],
                 version: int = 0) -> None:
        self.base = base  # the ruleset's items.jsonl
        self.items = CatalogueItems(items)
        self.version = version  # the store's catalogue version applied
        self.by_category: dict[str, list[str]] = {}
        self.by_tag: dict[str, list[str]] = {}
        for item_id, item in items.items():
            category = item.get("category")
            if isinstance(category, str):
                self.by_category.setdefault(category, []).append(item_id)
            tags = item.get("tags")
            if isinstance(tags, list):
                for tag in tags:
                    self.by_tag.setdefault(tag, []).append(item_id)

    @classmethod
    def build(cls, base: Iterable[Mapping[str, Any]],
              changes: Mapping[str, Mapping[str, Any] | None], version: int = 0) -> Catalogue:
        """The file's items with the store's changes applied (None: removed)."""
        base = tuple(base)
        items = {str(item["id"]): item for item in base}
        for item_id, item in changes.items():
            if item is None:
                items.pop(item_id, None)
            else:
                items[item_id] = item
        return cls(base, items, version)

    def updated(self, delta: Mapping[str, Mapping[str, Any] | None], version: int,
                new: Collection[str] = ()) -> Catalogue | None:
        """This catalogue with ``delta`` applied, the same catalogue :meth:`build` would
        make, without walking every item: items replaced in place (a feed's prices and
        stock: the indexes shared), removed, or added when their id is in ``new`` (never
        in the file or an earlier change: they go last, as :meth:`build` puts them); the
        index lists they touch copied. None when an item moves between categories or
        tags, or comes back after a removal (build it all).

        >>> old = Catalogue.build([{"id": "a", "category": "x", "price": 1}], {})
        >>> new = old.updated({"a": {"id": "a", "category": "x", "price": 2}}, 1)
        >>> new.items["a"]["price"], new.by_category is old.by_category
        (2, True)
        >>> old.updated({"a": {"id": "a", "category": "y"}}, 1) is None
        True
        >>> more = old.updated({"b": {"id": "b", "category": "x"}}, 2, new={"b"})
        >>> list(more.items), more.by_category, old.by_category
        (['a', 'b'], {'x': ['a', 'b']}, {'x': ['a']})
        """
        items = self.items
        indexes = _Indexes(self.by_category, self.by_tag)
        for item_id, item in delta.items():
            held = items.get(item_id)
            if item is None:
                if held is not None:
                    indexes.remove(item_id, held)
            elif held is None:
                if item_id not in new:
                    return None
                indexes.add(item_id, item)
            elif (held.get("category") != item.get("category")
                  or held.get("tags") != item.get("tags")):
                return None
        fresh = object.__new__(Catalogue)
        fresh.base, fresh.version = self.base, version
        fresh.items = items.changed(delta)
        fresh.by_category, fresh.by_tag = indexes.by_category, indexes.by_tag
        return fresh

    def with_changes(self, changes: Mapping[str, Mapping[str, Any] | None], version: int
                     ) -> Catalogue:
        return Catalogue.build(self.base, changes, version)

    def __len__(self) -> int:
        return len(self.items)

    def similar(self, item_id: str) -> list[tuple[str, float]]:
        """Items like ``item_id`` by attributes: the same category (1.0), else a shared tag
        (TAG_SHARE); at most PER_CATEGORY of each, half from the front of the catalogue's
        order and half from its end (the newest items: cold items reach customers through
        their attributes before anyone has used them)."""
        item = self.items.get(item_id)
        if item is None:
            return []
        out: dict[str, float] = {}
        category = item.get("category")
        if isinstance(category, str):
            for other in _ends(self.by_category.get(category, [])):
                if other != item_id:
                    out[other] = 1.0
        tags = item.get("tags")
        if isinstance(tags, list):
            for tag in tags:
                for other in _ends(self.by_tag.get(tag, [])):
                    if other != item_id and other not in out:
                        out[other] = TAG_SHARE
        return list(out.items())[:PER_CATEGORY]

    def first(self, count: int) -> list[str]:
        """The first ``count`` items (the last resort when nothing was learnt yet)."""
        out = []
        for item_id in self.items:
            out.append(item_id)
            if len(out) >= count:
                break
        return out


class _Indexes:
    """A catalogue's category and tag indexes, changed copy-on-write: a dict and the lists
    touched are copied once, the others shared with the catalogue they came from."""

    def __init__(self, by_category: dict[str, list[str]], by_tag: dict[str, list[str]]
                 ) -> None:
        self.by_category, self.by_tag = by_category, by_tag
        self._copied: set[tuple[bool, str]] = set()
        self._own = False

    def _list(self, of_category: bool, key: str) -> list[str]:
        if not self._own:
            self.by_category, self.by_tag = dict(self.by_category), dict(self.by_tag)
            self._own = True
        index = self.by_category if of_category else self.by_tag
        if (of_category, key) not in self._copied:
            self._copied.add((of_category, key))
            index[key] = list(index.get(key, ()))
        return index[key]

    def _keys(self, item: Mapping[str, Any]) -> list[tuple[bool, str]]:
        category, tags = item.get("category"), item.get("tags")
        keys = [(True, category)] if isinstance(category, str) else []
        return keys + ([(False, tag) for tag in tags] if isinstance(tags, list) else [])

    def add(self, item_id: str, item: Mapping[str, Any]) -> None:
        for of_category, key in self._keys(item):
            self._list(of_category, key).append(item_id)

    def remove(self, item_id: str, item: Mapping[str, Any]) -> None:
        for of_category, key in self._keys(item):
            listed = self._list(of_category, key)
            listed.remove(item_id)
            if not listed:  # (as a build has no empty list)
                del (self.by_category if of_category else self.by_tag)[key]
                self._copied.discard((of_category, key))


def _ends(members: list[str]) -> list[str]:
    """At most PER_CATEGORY + 1 members: all of a short list, else both ends of it.

    >>> _ends([str(i) for i in range(100)])[-2:]
    ['98', '99']
    """
    if len(members) <= PER_CATEGORY + 1:
        return members
    half = (PER_CATEGORY + 1) // 2
    return members[:half] + members[-half:]


EMPTY = Catalogue((), {})
