"""The item catalogue as decisions read it: the ruleset's file, then the changes made
over gRPC (shared by replicas through the store), with content indexes.

Content similarity uses two conventional attributes when the items block declares
them: ``category`` (a string) and ``tags`` (a list of strings). Each category's and tag's
members are indexed in the catalogue's order, so a decision looks items up, never scans
them; a change makes a new catalogue that shares the old one's items and indexes and
carries what changed beside them (:mod:`engine.decide.shared_dict`,
:mod:`engine.decide.ranked_members`): O(√items) amortised a change.

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

from engine.decide.ranked_members import RankedMembers, Ranks
from engine.decide.shared_dict import SharedDict

PER_CATEGORY = 20
"""Items of a category (or a tag) a seed item contributes, at most."""
TAG_SHARE = 0.5
"""Similarity of items sharing a tag but not the category."""
RANKS_SLACK = 1024
"""Ranks of removed items a catalogue carries beyond as many as its items, before a
change builds it anew."""

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
CatalogueItems = SharedDict[str, Item]
"""A catalogue's items by id, in its order: the file's, then the changes'."""
Key = tuple[bool, str]
"""An index key: ``(True, category)`` or ``(False, tag)``."""


class Catalogue:
    """Items by id, and the items of each category and tag (immutable: changes make a new
    catalogue, swapped in by reference)."""

    def __init__(self, base: tuple[Mapping[str, Any], ...], items: dict[str, Mapping[str, Any]],
                 version: int = 0) -> None:
        self.base = base  # the ruleset's items.jsonl
        self.items = CatalogueItems(items)
        self.version = version  # the store's catalogue version applied
        self.ranks = ranks = Ranks(items)  # (shared with the catalogues changed from this)
        self.handed = ranks.handed  # (ranks handed when this one was made)
        categories: dict[str, list[str]] = {}
        tags: dict[str, list[str]] = {}
        for item_id, item in items.items():  # (what _keys says, inline: a million items
            category = item.get("category")  # are indexed in under half a second)
            if isinstance(category, str):
                categories.setdefault(category, []).append(item_id)
            listed = item.get("tags")
            if isinstance(listed, list):
                for tag in listed:
                    if isinstance(tag, str):
                        members = tags.setdefault(tag, [])
                        if not members or members[-1] is not item_id:  # (a tag twice)
                            members.append(item_id)
        self.by_category: SharedDict[str, RankedMembers] = SharedDict({
            name: RankedMembers(ids, ranks) for name, ids in categories.items()})
        self.by_tag: SharedDict[str, RankedMembers] = SharedDict({
            name: RankedMembers(ids, ranks) for name, ids in tags.items()})

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
                new: Collection[str] = (), last: Collection[str] = ()) -> Catalogue | None:
        """This catalogue with ``delta`` applied, the same catalogue :meth:`build` would
        make, in O(√items) amortised, not a walk of every item: items replaced (a feed's
        prices and stock, or a new category or tags: the item keeps its place), removed,
        added when their id is in ``new`` (never in the file or an earlier change: they go
        last, as :meth:`build` puts them), or added again after a removal when it is in
        ``last`` (not in the file: they go last too, as the store's order of changes puts
        them); the index keys they touch changed. None when another item not held comes
        back (build it all), when this is not the latest catalogue of its build (their
        items' ranks are shared: changes are applied in one line, as the keeper does), or
        when removed items' ranks outnumber the items (a build every so many changes,
        O(1) amortised).

        >>> old = Catalogue.build([{"id": "a", "category": "x", "price": 1}], {})
        >>> new = old.updated({"a": {"id": "a", "category": "x", "price": 2}}, 1)
        >>> new.items["a"]["price"], new.by_category is old.by_category
        (2, True)
        >>> moved = old.updated({"a": {"id": "a", "category": "y"}}, 1)
        >>> dict(moved.by_category), dict(old.by_category)
        ({'y': RankedMembers(['a'])}, {'x': RankedMembers(['a'])})
        >>> more = old.updated({"b": {"id": "b", "category": "x"}}, 2, new={"b"})
        >>> list(more.items), list(more.by_category["x"])
        (['a', 'b'], ['a', 'b'])
        >>> gone = Catalogue.build([{"id": "a"}, {"id": "b"}], {}).updated({"a": None}, 1)
        >>> gone.updated({"a": {"id": "a"}}, 2) is None
        True
        >>> list(gone.updated({"a": {"id": "a"}}, 2, last={"a"}).items)
        ['b', 'a']
        """
        items, ranks, last = self.items, self.ranks, frozenset(last)
        if ranks.handed != self.handed or ranks.handed > 2 * len(items) + RANKS_SLACK:
            return None  # (a catalogue of this build was changed before, or it has as many
            # removed items' ranks as items)
        if any(item is not None and item_id not in items and item_id not in new
               and item_id not in last for item_id, item in delta.items()):
            return None
        removed: dict[Key, list[str]] = {}
        added: dict[Key, list[str]] = {}
        for item_id, item in delta.items():
            held = items.get(item_id)
            if item is None:
                if held is not None:
                    for key in _keys(held):
                        removed.setdefault(key, []).append(item_id)
                continue
            if held is None or item_id in last:
                ranks.hand(item_id)  # (after every other: a new rank, a new place)
                old_keys: list[Key] = []
                if held is not None:  # (gone and back since: out of every key first)
                    for key in _keys(held):
                        removed.setdefault(key, []).append(item_id)
            else:
                old_keys = _keys(held)
            new_keys = _keys(item)
            for key in old_keys:
                if key not in new_keys:
                    removed.setdefault(key, []).append(item_id)
            for key in new_keys:
                if key not in old_keys:
                    added.setdefault(key, []).append(item_id)
        fresh = object.__new__(Catalogue)
        fresh.base, fresh.version, fresh.ranks = self.base, version, ranks
        fresh.handed = ranks.handed
        fresh.items = items.changed(delta, last)
        fresh.by_category, fresh.by_tag = self.by_category, self.by_tag
        for is_category in (True, False):
            index = self.by_category if is_category else self.by_tag
            changes = {name: index[name].changed(ranks, removed.get((is_category, name), ()),
                                                 added.get((is_category, name), ()))
                       if name in index else RankedMembers(
                           sorted(added[(is_category, name)], key=ranks.__getitem__), ranks)
                       for is_category_, name in {*removed, *added}
                       if is_category_ is is_category}
            if changes:
                if is_category:
                    fresh.by_category = index.changed(changes)
                else:
                    fresh.by_tag = index.changed(changes)
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
        each = (PER_CATEGORY + 1) // 2
        for is_category, name in _keys(item):
            members = (self.by_category if is_category else self.by_tag).get(name)
            if members is None:
                continue
            for other in members.ends(each):
                if other != item_id and other not in out:
                    out[other] = 1.0 if is_category else TAG_SHARE
        return list(out.items())[:PER_CATEGORY]

    def first(self, count: int) -> list[str]:
        """The first ``count`` items (the last resort when nothing was learnt yet)."""
        out = []
        for item_id in self.items:
            out.append(item_id)
            if len(out) >= count:
                break
        return out


def _keys(item: Mapping[str, Any]) -> list[Key]:
    """What an item is indexed under: its category (a string) and its tags (strings),
    each once.

    >>> _keys({"category": "x", "tags": ["t", "u", "t", 3]})
    [(True, 'x'), (False, 't'), (False, 'u')]
    """
    category, tags = item.get("category"), item.get("tags")
    keys: list[Key] = [(True, category)] if isinstance(category, str) else []
    if isinstance(tags, list):
        keys.extend(dict.fromkeys((False, tag) for tag in tags if isinstance(tag, str)))
    return keys


EMPTY = Catalogue((), {})
