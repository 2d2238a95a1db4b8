"""The recommender: what customers do with catalogue items, learnt online from the log.

Every item interaction (a ``TrackEvent`` with an item, a click on a recommended item)
is a learning-log entry, so every replica applies the same interactions in the same
order and holds the same state; it is snapshotted with the propensity models. Three
sources, each bounded:

- **popularity**: a time-decayed count per item (half-life :data:`HALF_LIFE_SECONDS`),
  the fallback for customers with no history;
- **co-occurrence**: items interacted with by the same customer, counted pairwise with
  the customer's recent items; an item's neighbours are its partners by cosine
  similarity (count of the pair over the square root of the items' counts), at most
  :data:`MAX_PARTNERS` kept per item, so candidates come from precomputed neighbours,
  never from a scan of the catalogue;
- **a model**: River's ``reco.BiasedMF`` (matrix factorisation) on implicit feedback:
  each interaction is a positive, and :data:`NEGATIVES` popular items the customer did
  not touch are sampled as negatives (the same draw on every replica). Customers are
  named by pseudonym; at most :data:`MAX_USERS` are held (least recently active
  dropped first), and a ``forget`` entry drops one.

>>> from engine.records import LearningEvent
>>> rec = Recommender()
>>> for n, (user, item) in enumerate([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]):
...     history = ["a"] if item == "b" else []
...     rec.learn(LearningEvent("", "", "view", float(n), float(n), user=user, item_id=item,
...                             history=history))
>>> [(item, round(similarity, 3)) for item, similarity in rec.neighbours("a")]
[('b', 0.286)]
>>> [item for item, _ in rec.popular(2)]  # as often as a, and more recently
['b', 'a']
"""

from __future__ import annotations

import heapq
import math
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import optim, reco

from engine.records import FORGET, LearningEvent

HALF_LIFE_SECONDS = 7 * 86400.0
"""Popularity halves in a week without interactions."""
MAX_PARTNERS = 100
"""Co-occurrence partners kept per item (the weakest dropped beyond it)."""
NEIGHBOURS = 30
"""Neighbours an item contributes to a recommendation."""
SHRINK = 5.0
"""Added to the cosine's denominator: a pair seen once between two rare items is not a
perfect match (shrinkage toward 0, as item-kNN recommenders do)."""
STALE_SECONDS = 1.0
"""An item's cached neighbours are recomputed at most this often once new pairs arrive
(recomputing on every interaction would make hot items cost on every decision)."""
MAX_ITEMS = 100_000
"""Items with learnt state (the least popular dropped beyond it)."""
MAX_USERS = 50_000
"""Customers the model holds factors for (least recently active dropped beyond it)."""
MODEL_HISTORY = 3
"""Interactions of a customer before the model ranks their recommendations."""
NEGATIVES = 2
"""Sampled negatives per interaction for the model (implicit feedback)."""
POPULAR_KEPT = 200
"""The most popular items kept ranked (refreshed at most every REFRESH_SECONDS)."""
REFRESH_SECONDS = 1.0
"""Ranking the popular items reads every item (35 ms at 100,000): once a second at most,
not per interaction (bench/RESULTS.md §15)."""
QUALITY_EVERY = 10
"""One interaction in this many (with a history) is predicted before it is learnt."""
QUALITY_K = 10
QUALITY_WINDOW = 1000
EVENT_WEIGHTS: Mapping[str, float] = {
    "purchase": 3.0, "conversion": 3.0, "add_to_cart": 2.0, "click": 1.0, "view": 1.0}
"""How much an interaction counts, by event or outcome (others: 1)."""


def _draw(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by its inputs: the same on every replica."""
    return zlib.crc32(":".join(parts).encode()) / 2.0**32


class Recommender:
    """Popularity, co-occurrence and a factorisation model; thread-safe, picklable."""

    def __init__(self, factors: int = 16, seed: int = 7) -> None:
        self.model = reco.BiasedMF(
            n_factors=factors, bias_optimizer=optim.SGD(0.02),
            latent_optimizer=optim.SGD(0.05), l2_bias=0.001, l2_latent=0.005,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed)
        self.popularity: dict[str, tuple[float, float]] = {}  # item -> (log2 score, at)
        self.counts: dict[str, float] = {}  # item -> weighted interactions, all time
        self.partners: dict[str, dict[str, float]] = {}  # item -> item -> co-occurrence
        self.users: OrderedDict[str, int] = OrderedDict()  # pseudonym -> interactions
        self.interactions = 0
        self.hits: deque[bool] = deque(maxlen=QUALITY_WINDOW)  # progressive hit@10
        self.item_ids: list[str] = []  # every item with learnt state, in order of first use
        self._top: list[tuple[str, float]] = []  # most popular first: (item, log2 score)
        self._refreshed = 0.0  # monotonic time of the last ranking
        self._neighbours: dict[str, list[tuple[str, float]]] = {}  # cache, per item
        self._stale: set[str] = set()  # items whose pairs changed since their cache was made
        self._cached_at: dict[str, float] = {}  # when each item's neighbours were computed
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_neighbours"] = {}
        state["_stale"] = set()
        state["_cached_at"] = {}
        state["_refreshed"] = 0.0  # another process's clock: rank again on the next event
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lock = self.__dict__.get("_lock")
        if lock is None:  # unpickled
            self.__dict__.update(state)
            self._lock = threading.RLock()
            return
        with lock:  # a live recommender takes another's state (a snapshot adopted)
            self.__dict__.update({k: v for k, v in state.items() if k != "_lock"})

    # ---- learning ------------------------------------------------------------------
    def learn(self, event: LearningEvent) -> None:
        """Apply one log entry: an item interaction, or a customer to forget."""
        if event.outcome == FORGET and not event.item_id:
            self.forget(event.user)
            return
        if not event.item_id:
            return
        weight = EVENT_WEIGHTS.get(event.outcome, 1.0)
        item = event.item_id
        with self._lock:
            if event.history and self.interactions % QUALITY_EVERY == 0:
                self.hits.append(item in self.predict(event.history, QUALITY_K))
            self._count(item, weight, event.at)
            for partner in event.history:
                if partner != item:
                    self._pair(item, partner, weight)
                    self._pair(partner, item, weight)
            if event.user:
                self._learn_model(event.user, item, weight)
            self.interactions += 1
            if (len(self.popularity) <= POPULAR_KEPT  # few items: ranking them is cheap
                    or time.monotonic() - self._refreshed >= REFRESH_SECONDS):
                self._refresh_top()

    def _count(self, item: str, weight: float, at: float) -> None:
        """Decayed popularity, kept as log2 of the score at its last update."""
        old = self.popularity.get(item)
        if old is None:
            self.item_ids.append(item)
        score = weight if old is None else (
            2.0 ** (old[0] - max(at - old[1], 0.0) / HALF_LIFE_SECONDS) + weight)
        self.popularity[item] = (math.log2(score), max(at, old[1]) if old else at)
        self.counts[item] = self.counts.get(item, 0.0) + weight
        if len(self.popularity) > MAX_ITEMS:
            self._drop_items(len(self.popularity) - int(MAX_ITEMS * 0.9))

    def _pair(self, item: str, partner: str, weight: float) -> None:
        partners = self.partners.setdefault(item, {})
        partners[partner] = partners.get(partner, 0.0) + weight
        if len(partners) > MAX_PARTNERS:
            for weakest in heapq.nsmallest(MAX_PARTNERS // 4, partners, key=partners.__getitem__):
                del partners[weakest]
        self._stale.add(item)

    def _learn_model(self, user: str, item: str, weight: float) -> None:
        self.users[user] = self.users.get(user, 0) + 1
        self.users.move_to_end(user)
        if len(self.users) > MAX_USERS:
            self._drop_user(next(iter(self.users)))
        model = self.model
        for _ in range(max(1, round(weight))):
            model.learn_one(user, item, 1.0)
        known = self.item_ids
        for k in range(NEGATIVES):  # items drawn uniformly: mostly ones the customer ignored
            other = known[int(_draw(user, item, str(self.interactions), str(k)) * len(known))]
            if other != item:
                model.learn_one(user, other, 0.0)

    def _refresh_top(self) -> None:
        """The most popular items, ranked by their decayed score at a common time."""
        self._refreshed = time.monotonic()
        if not self.popularity:
            self._top = []
            return
        items = list(self.popularity)
        # each item's log2 score at time 0 (log2 score + t/H), computed once; the ties keep
        # their order of first use (nlargest is stable over the indexes)
        keys = [log2 + at / HALF_LIFE_SECONDS for log2, at in self.popularity.values()]
        best = heapq.nlargest(POPULAR_KEPT, range(len(keys)), key=keys.__getitem__)
        self._top = [(items[i], keys[i]) for i in best]

    def _drop_items(self, count: int) -> None:
        weakest = heapq.nsmallest(count, self.popularity,
                                  key=lambda i: self.popularity[i][0]
                                  + self.popularity[i][1] / HALF_LIFE_SECONDS)
        gone = set(weakest)
        self.item_ids = [i for i in self.item_ids if i not in gone]
        for item in weakest:
            self.popularity.pop(item, None)
            self.counts.pop(item, None)
            self.partners.pop(item, None)
            self._neighbours.pop(item, None)
            self._stale.discard(item)
            self.model.i_biases.pop(item, None)
            self.model.i_latents.pop(item, None)

    def forget(self, user: str) -> None:
        """Drop the customer's factors (their interactions stay in the item statistics,
        which hold no customer)."""
        with self._lock:
            if user in self.users:
                self._drop_user(user)

    def _drop_user(self, user: str) -> None:
        self.users.pop(user, None)
        self.model.u_biases.pop(user, None)
        self.model.u_latents.pop(user, None)

    # ---- reading -------------------------------------------------------------------
    def popular(self, count: int) -> list[tuple[str, float]]:
        """The ``count`` most popular items, with their share of the top item's score."""
        top = self._top[:count]
        if not top:
            return []
        best = top[0][1]
        return [(item, 2.0 ** (score - best)) for item, score in top]

    @property
    def popular_key(self) -> object:
        """An object replaced whenever :meth:`popular` may answer differently (the ranking
        is never changed in place), to key what is computed from it."""
        return self._top

    def neighbours(self, item: str) -> list[tuple[str, float]]:
        """Items most often used with ``item``, by cosine similarity, best first."""
        cached = self._neighbours.get(item)
        if cached is not None and (item not in self._stale or time.monotonic()
                                   - self._cached_at.get(item, 0.0) < STALE_SECONDS):
            return cached
        with self._lock:
            partners = self.partners.get(item)
            if not partners:
                return []
            counts = self.counts
            norm = math.sqrt(counts.get(item, 1.0))
            sqrt, get = math.sqrt, counts.get
            scored = [(other, n / (norm * sqrt(get(other, 1.0)) + SHRINK))
                      for other, n in partners.items()]
            best = heapq.nlargest(NEIGHBOURS, scored, key=lambda pair: (pair[1], pair[0]))
            self._neighbours[item] = best
            self._cached_at[item] = time.monotonic()
            self._stale.discard(item)
            return best

    def knows(self, user: str) -> bool:
        """Whether the model has learnt enough of the customer to rank for them."""
        return self.users.get(user, 0) >= MODEL_HISTORY

    def model_score(self, user: str, item: str) -> float:
        """The model's affinity of a known customer for an item (higher is better); an
        item the model has not seen scores the customer's baseline. Reads only: unlike
        ``predict_one`` it adds no entry for an unseen customer or item."""
        model = self.model
        with self._lock:
            score = float(model.global_mean.get()) + model.u_biases.get(user, 0.0)
            score += model.i_biases.get(item, 0.0)
            u = model.u_latents.get(user)
            i = model.i_latents.get(item)
            if u is not None and i is not None:
                score += float(np.dot(u, i))
        return score

    def model_scores(self, user: str, items: list[str]) -> list[float]:
        """:meth:`model_score` of several items at once (one matrix product)."""
        if not items:
            return []
        model = self.model
        with self._lock:
            base = float(model.global_mean.get()) + model.u_biases.get(user, 0.0)
            biases = [model.i_biases.get(item, 0.0) for item in items]
            u = model.u_latents.get(user)
            if u is None:
                return [base + b for b in biases]
            zero = np.zeros_like(u)
            latents = np.array([model.i_latents.get(item, zero) for item in items])
        dots = latents @ u
        return [base + b + float(d) for b, d in zip(biases, dots, strict=True)]

    def predict(self, history: Sequence[str], count: int) -> list[str]:
        """The ``count`` items co-occurrence and popularity rank first for a customer whose
        recent items are ``history`` (newest first), excluding them: what the quality
        metric checks the next interaction against."""
        scores: dict[str, float] = {}
        for rank, seed in enumerate(history[:10]):
            for other, similarity in self.neighbours(seed):
                scores[other] = scores.get(other, 0.0) + similarity / (1.0 + 0.2 * rank)
        for other, share in self.popular(50):
            scores[other] = scores.get(other, 0.0) + 0.3 * share
        for seen in history:
            scores.pop(seen, None)
        return heapq.nlargest(count, scores, key=scores.__getitem__)

    def stats(self) -> dict[str, float]:
        """Sizes and the progressive hit rate (the share of sampled interactions whose item
        was among the 10 predicted just before it), for reports and metrics."""
        hits = list(self.hits)
        return {"interactions": float(self.interactions), "items": float(len(self.popularity)),
                "customers": float(len(self.users)),
                "pairs": float(sum(len(p) for p in self.partners.values())),
                "hit_rate@10": sum(hits) / len(hits) if hits else float("nan"),
                "hit_samples": float(len(hits))}
