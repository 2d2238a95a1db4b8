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

from collections.abc import Iterable, Mapping
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

    def updated(self, delta: Mapping[str, Mapping[str, Any] | None], version: int
                ) -> Catalogue | None:
        """This catalogue with ``delta`` applied, if it only replaces items it holds
        without moving them between categories or tags (a feed's prices and stock): the
        items copied, the indexes shared, the same catalogue :meth:`build` would make; else
        None (a new, removed or re-categorised item: build it all).

        >>> old = Catalogue.build([{"id": "a", "category": "x", "price": 1}], {})
        >>> new = old.updated({"a": {"id": "a", "category": "x", "price": 2}}, 1)
        >>> new.items["a"]["price"], new.by_category is old.by_category
        (2, True)
        >>> old.updated({"a": {"id": "a", "category": "y"}}, 1) is None
        True
        """
        items = self.items
        for item_id, item in delta.items():
            held = items.get(item_id)
            if (item is None or held is None or held.get("category") != item.get("category")
                    or held.get("tags") != item.get("tags")):
                return None
        fresh = object.__new__(Catalogue)
        fresh.base, fresh.version = self.base, version
        fresh.items = {**items, **delta}  # type: ignore[dict-item]  # (no None: checked)
        fresh.by_category, fresh.by_tag = self.by_category, self.by_tag
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
