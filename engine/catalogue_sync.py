"""The item catalogue a process serves: the ruleset's file plus the changes made through
any replica (the store's, read by version), and the checked upserts and removals.

>>> from dsl.loader import load_sources
>>> from adapters.memory import MemoryStore
>>> rs = load_sources({"r/a.arb": "items { price: number }", "r/items.jsonl": '{"id": "a"}'})
>>> keeper = CatalogueKeeper(MemoryStore(), rs)
>>> keeper.upsert(rs, [{"id": "b", "price": 2.0}])
1
>>> sorted(keeper.catalogue.items)
['a', 'b']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dsl.catalogue import check_item
from dsl.ruleset import Ruleset
from engine.decide.catalogue import Catalogue, decode_item, encode_item
from engine.ports import Store, StoreUnavailable
from engine.requests import InvalidArgument, check_id
from engine.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
throttled = ThrottledLog(log)  # an outage's repeated warnings, one line per 10 s

MAX_ITEMS_PER_CALL = 10_000
"""Catalogue items one upsert or removal may carry."""


def _ids(items: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(str(item["id"]) for item in items)


class CatalogueKeeper:
    """Holds the served :class:`Catalogue` (swapped by reference, never mutated)."""

    def __init__(self, store: Store, ruleset: Ruleset) -> None:
        self.store = store
        self._lock = threading.Lock()  # one rebuild at a time (the periodic sync, an
        self._base = ruleset.catalogue  # upsert's, a reload's), in version order
        self._base_ids = _ids(ruleset.catalogue)
        self._changes: dict[str, Mapping[str, Any] | None] = {}  # the store's, decoded
        self.catalogue = Catalogue.build(ruleset.catalogue, {})

    def rebase(self, ruleset: Ruleset) -> None:
        """A reloaded ruleset's file, with the store's changes on top."""
        with self._lock:
            if ruleset.catalogue is not self._base:
                self._base, self._base_ids = ruleset.catalogue, _ids(ruleset.catalogue)
                self.catalogue = Catalogue.build(ruleset.catalogue, self._changes,
                                                 self.catalogue.version)

    def sync(self) -> None:
        """Apply the changes made through any replica since our version (one store read
        when there are none; a warning, and the catalogue as it was, when the store is
        unavailable)."""
        with self._lock:
            try:
                version, changes, added, everything = self.store.catalogue_changes(
                    self.catalogue.version)
            except StoreUnavailable as err:
                throttled.warning("catalogue", "catalogue not synced, store unavailable: %s",
                                  err)
                return
            if changes is None:
                return
            known = self.catalogue.version
            delta: dict[str, Mapping[str, Any] | None] = {
                item_id: decode_item(data) for item_id, data in changes.items()}
            if not everything and 0 < known <= version:  # what changed since ours: merged
                # into what we had
                held = self.catalogue.items
                new = {item_id for item_id, item in delta.items() if item is not None
                       and item_id not in self._base_ids and not held.knows(item_id)}
                back = [item_id for item_id, item in delta.items()  # (added again after a
                        if item_id in added and item is not None  # removal: it goes where
                        and item_id not in new]  # it was added again: last)
                for item_id in back:
                    self._changes.pop(item_id, None)
                self._merge(delta)
                updated = None if any(item_id in self._base_ids for item_id in back) else \
                    self.catalogue.updated(delta, version, new, last=back)
            else:  # everything
                self._changes, updated = {}, None
                self._merge(delta)
            if updated is None:
                updated = Catalogue.build(self._base, self._changes, version)
            self.catalogue = updated

    def _merge(self, delta: Mapping[str, Mapping[str, Any] | None]) -> None:
        """The store's changes into ours (only read under the lock), in the store's
        order, which places each item where it was last added; a removed item is kept
        only if the file has it (as None), so what is kept is bounded by the catalogue."""
        for item_id, item in delta.items():
            if item is None and item_id not in self._base_ids:
                self._changes.pop(item_id, None)
            else:
                self._changes[item_id] = item

    def upsert(self, ruleset: Ruleset, items: Sequence[Mapping[str, Any]]) -> int:
        """Add or replace items, checked against the ruleset's items block (raises
        InvalidArgument naming ``items[i].NAME``; all or nothing); returns the version."""
        if not ruleset.items_declared:
            raise InvalidArgument("items", "the serving ruleset declares no items block")
        if len(items) > MAX_ITEMS_PER_CALL:
            raise InvalidArgument("items", f"at most {MAX_ITEMS_PER_CALL} per call")
        checked: dict[str, bytes] = {}
        for i, raw in enumerate(items):
            item, problems = check_item(ruleset.item_schema, raw)
            if problems:
                name, message = problems[0]
                raise InvalidArgument(f"items[{i}].{name}", message)
            assert item is not None
            checked[item["id"]] = encode_item(item)
        version = self.store.change_items(checked, ())
        self.sync()
        return version

    def remove(self, item_ids: Sequence[str]) -> int:
        """Take items out (they are no longer recommended); returns the version."""
        if len(item_ids) > MAX_ITEMS_PER_CALL:
            raise InvalidArgument("item_ids", f"at most {MAX_ITEMS_PER_CALL} per call")
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id)
        version = self.store.change_items({}, item_ids, lasting=self._base_ids)
        self.sync()
        return version
