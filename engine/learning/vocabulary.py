"""A model's one-hot values, bounded: at most ``limit`` values of each feature get a
weight of their own, later ones share one.

A one-hot feature (``context.page=/cart``) gets a weight per distinct value. A string
with many values (a URL, a search term, an id sent as context) would grow a model, its
prediction copies and its snapshots with every new value for as long as the server runs.
Each model admits the first :data:`MAX_VALUES` values of each feature it learns (or as
many as its ``model`` block's ``vocabulary:`` says); the values after them share one
weight, ``NAME=(other)`` (the residual bin of Pega's adaptive models). Every replica
learns the same log in the same order, so every replica admits the same values. Below
the limit nothing changes: an unseen value has no weight yet, as before; a hashed model
(``hashed:``) is bounded by its buckets already.

>>> v = Vocabulary(limit=2)
>>> [list(v.admit({f"context.page={p}": 1.0, "spend": 3.0})) for p in "abc"]
[['context.page=a', 'spend'], ['context.page=b', 'spend'], ['context.page=(other)', 'spend']]
>>> v.seen({"context.page=a": 1.0}), v.seen({"context.page=z": 1.0})
({'context.page=a': 1.0}, {'context.page=(other)': 1.0})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dsl.vocabulary import MODEL_VOCABULARY

log = logging.getLogger(__name__)

MAX_VALUES = MODEL_VOCABULARY
"""Values of one one-hot feature that a model gives weights of their own, unless its
``model`` block's ``vocabulary:`` says otherwise."""
OTHER = "(other)"
"""The value every later value of a full feature is learnt and predicted as."""


class Vocabulary:
    """The values a model admitted, by feature name (``name`` of ``name=value``)."""

    __slots__ = ("full", "limit", "values")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_VALUES if limit is None else limit
        self.values: dict[str, set[str]] = {}
        self.full: frozenset[str] = frozenset()
        """Features at the limit: replaced, never changed in place, so a decision reads
        it without the models' lock."""

    def resize(self, limit: int) -> None:
        """A new limit (the ``model`` block's ``vocabulary:`` changed; call under the
        models' lock): values admitted stay admitted; a feature with room again admits
        new values, one at or past the new limit pools them.

        >>> v = Vocabulary(limit=1)
        >>> _ = v.admit({"page=a": 1.0}), v.admit({"page=b": 1.0})
        >>> v.seen({"page=b": 1.0})
        {'page=(other)': 1.0}
        >>> v.resize(2)
        >>> dict(v.admit({"page=b": 1.0})), sorted(v.values["page"])
        ({'page=b': 1.0}, ['a', 'b'])
        """
        self.limit = limit
        self.full = frozenset(name for name, values in self.values.items()
                              if len(values) >= limit)

    def admit(self, features: Mapping[str, float], model: str = "") -> Mapping[str, float]:
        """What a model learns of ``features`` (call under the models' lock): a new value
        is admitted while its feature has room, else pooled; order kept."""
        pool = False
        for key in features:
            name, eq, value = key.partition("=")
            if not eq:
                continue
            values = self.values.get(name)
            if values is None:
                values = self.values[name] = set()
            if value in values:
                continue
            if len(values) >= self.limit:
                pool = True
                continue
            values.add(value)
            if len(values) == self.limit:
                self.full = self.full | {name}
                log.warning(
                    "model %s: %s has %d distinct values; later ones share the weight of "
                    "%s=%s (hash the model's features with `hashed:`, or leave %s out of "
                    "its `features:`)", model, name, self.limit, name, OTHER, name)
        return self.seen(features) if pool else features

    def seen(self, features: Mapping[str, float]) -> Mapping[str, float]:
        """What a model predicts from: values of a full feature that it never admitted
        read the pooled weight; ``features`` itself while no feature is full."""
        full = self.full
        if not full:
            return features
        out: dict[str, float] = {}
        for key, x in features.items():
            name, eq, value = key.partition("=")
            if eq and name in full and value not in self.values[name]:
                key = f"{name}={OTHER}"
            out[key] = x
        return out
