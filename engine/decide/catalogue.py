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

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import msgspec

PER_CATEGORY = 20
"""Items of a category (or a tag) a seed item contributes, at most."""
TAG_SHARE = 0.5
"""Similarity of items sharing a tag but not the category."""

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


class Catalogue:
    """Items by id, and the items of each category and tag (immutable: changes make a new
    catalogue, swapped in by reference)."""

    def __init__(self, base: tuple[Mapping[str, Any], ...], items: dict[str, Mapping[str, Any]],
                 version: int = 0) -> None:
        self.base = base  # the ruleset's items.jsonl
        self.items = items
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
        fresh.items = dict(items)
        for item_id, item in delta.items():
            if item is None:
                fresh.items.pop(item_id, None)
            else:
                fresh.items[item_id] = item
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
