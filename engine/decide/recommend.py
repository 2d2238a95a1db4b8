"""``items: recommend(N, where: ..., exclude: ...)``: an action's items for one customer.

Candidates come from what was learnt and indexed beforehand, never from a scan of
the catalogue: the co-occurrence neighbours of the customer's recent items, items
like them by attributes (category, tags), and the most popular items. Each candidate
is scored by the strongest source that proposed it (co-occurrence, then content,
then popularity, on separate scales so that the order holds); once the model knows
the customer (:data:`~engine.learning.recommender.MODEL_HISTORY` interactions) it
ranks every candidate instead. Excluded items (``exclude: purchase within 30d``), items
no longer in the catalogue and those failing ``where`` are dropped; the best N stay,
each with its score and the reason it was chosen.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dsl.ruleset import RecommendSpec
from engine.decide.catalogue import Catalogue
from engine.decide.decision import RecommendedItem
from engine.records import Profile, recent_items

if TYPE_CHECKING:  # River loads only where the recommender is built (the CLI stays light)
    from engine.learning.recommender import Recommender

log = logging.getLogger(__name__)

SEEDS = 10
"""Recent items of the customer recommendations start from."""
POPULAR = 50
"""Popular items considered for every customer."""
MAX_CANDIDATES = 300
"""Candidates gathered per recommendation, at most (then filtered)."""
FALLBACK_SCAN = 500
"""Catalogue items, in its order, tried when the learnt candidates do not fill the list."""
COLD_LISTS = 64
"""Lists kept for customers with no history, one per ``recommend(...)`` of the rulesets."""
MODEL_RERANK = 60
"""The best candidates the model scores too, once it knows the customer."""
WEIGHT = {"co-occurrence": 1.0, "content": 0.1, "popularity": 0.3, "catalogue": 0.001,
          "model": 0.1}
"""Each source's scores are in [0, 1]; an item's score is their weighted sum (measured
with bench/reco_quality.py)."""


class Recommendations:
    """What recommend() reads: the catalogue and the learnt recommender; and the ranked
    candidates of a customer with no item history, the same for every such customer
    until popularity changes (kept while this catalogue and recommender serve)."""

    __slots__ = ("_cold", "_cold_items", "catalogue", "recommender")

    def __init__(self, catalogue: Catalogue, recommender: Recommender) -> None:
        self.catalogue = catalogue
        self.recommender = recommender
        self._cold: tuple[object, Pool, list[str]] | None = None
        self._cold_items: dict[RecommendSpec, tuple[RecommendedItem, ...]] = {}

    def cold(self) -> tuple[Pool, list[str]]:
        """The candidates of a customer with no recent item and their order, best first."""
        popular = self.recommender.popular_key
        cold = self._cold
        if cold is None or cold[0] is not popular:
            pool = candidates(self, [])
            cold = self._cold = (popular, pool, _ranked(pool.scores))
            self._cold_items = {}
        return cold[1], cold[2]

    def cold_items(self, spec: RecommendSpec) -> tuple[RecommendedItem, ...] | None:
        """What ``spec`` recommends to a customer with no item history, once found for
        one of them, when its ``where`` reads only the items (else None)."""
        self.cold()  # (forgets the lists when popularity changed)
        return self._cold_items.get(spec)

    def remember_cold_items(self, spec: RecommendSpec, items: list[RecommendedItem]) -> None:
        if spec.where is None or spec.where_reads_only_items:
            if len(self._cold_items) >= COLD_LISTS:  # specs of many reloads: start over
                self._cold_items.clear()
            self._cold_items[spec] = tuple(items)


def _excluded(spec: RecommendSpec, profile: Profile | None, now: float) -> set[str]:
    if not spec.exclude or profile is None:
        return set()
    out = set()
    for at, item_id, event in profile.items:
        for name, window in spec.exclude:
            if event == name and (window is None or now - at <= window):
                out.add(item_id)
    return out


class Pool:
    """Candidate items with their score: the weighted evidence of every source added up;
    the reason of an item is the source that contributed most (computed for those kept)."""

    __slots__ = ("found", "scores")

    def __init__(self, found: dict[str, dict[str, float]]) -> None:
        self.found = {name: part for name, part in found.items() if part}
        scores: dict[str, float] = {}
        for part in self.found.values():
            for item, value in part.items():
                scores[item] = scores.get(item, 0.0) + value
        self.scores = scores

    def reason(self, item: str) -> str:
        return max(self.found, key=lambda name: self.found[name].get(item, 0.0))


def candidates(sources: Recommendations, seeds: list[str], user_key: str = "") -> Pool:
    """The candidates of every source for a customer whose recent items are ``seeds``
    (and the model's scores of the best of them, once it knows the customer)."""
    recommender, catalogue = sources.recommender, sources.catalogue
    co: dict[str, float] = {}
    content: dict[str, float] = {}
    w_co, w_content = WEIGHT["co-occurrence"], WEIGHT["content"]
    for rank, seed in enumerate(seeds):
        recency = 1.0 / (1.0 + 0.2 * rank)  # the newest items count most
        for item, similarity in recommender.neighbours(seed):
            co[item] = co.get(item, 0.0) + similarity * recency * w_co
        for item, similarity in catalogue.similar(seed):
            content[item] = content.get(item, 0.0) + similarity * recency * w_content
        if len(co) + len(content) >= MAX_CANDIDATES:
            break
    w_pop = WEIGHT["popularity"]
    found = {"co-occurrence": co, "content": content,
             "popularity": {item: share * w_pop for item, share in recommender.popular(POPULAR)}}
    pool = Pool(found)
    if len(pool.scores) < POPULAR:  # nothing learnt yet: the catalogue itself, in order
        found["catalogue"] = {item: WEIGHT["catalogue"] / (1 + n)
                              for n, item in enumerate(catalogue.first(POPULAR))}
        pool = Pool(found)
    if user_key and recommender.knows(user_key):  # the model re-ranks the best candidates
        best = heapq.nlargest(MODEL_RERANK, pool.scores, key=pool.scores.__getitem__)
        w_model = WEIGHT["model"]
        model = {item: score * w_model
                 for item, score in zip(best, recommender.model_scores(user_key, best),
                                        strict=True)}
        found["model"] = model
        pool.found["model"] = model
        for item, value in model.items():
            pool.scores[item] += value
    return pool


def recommend(spec: RecommendSpec, sources: Recommendations, profile: Profile | None,
              user_key: str, args: tuple[Any, ...], now: float) -> list[RecommendedItem]:
    """The action's items for this customer, best first (``args`` are the rules'
    arguments; ``where`` reads the item as ``item``)."""
    history = profile.items if profile is not None else []
    seeds = recent_items(history, SEEDS)
    cold = not history and not (user_key and sources.recommender.knows(user_key))
    if cold:
        found = sources.cold_items(spec)
        if found is not None:  # the same for every customer with no history
            return list(found)
        pool, ranked = sources.cold()
    else:
        pool = candidates(sources, seeds, user_key)
        ranked = _ranked(pool.scores)
    out = _recommended(spec, sources, pool, ranked, _excluded(spec, profile, now), args, now)
    if cold:
        sources.remember_cold_items(spec, out)
    return out


def _recommended(spec: RecommendSpec, sources: Recommendations, pool: Pool, ranked: list[str],
                 excluded: set[str], args: tuple[Any, ...], now: float
                 ) -> list[RecommendedItem]:
    """The first ``spec.count`` of ``ranked`` that are kept, then of the catalogue's order."""
    catalogue = sources.catalogue
    scores = pool.scores
    out: list[RecommendedItem] = []
    for item_id in ranked:
        found = _kept(spec, catalogue, item_id, scores[item_id], pool.reason, excluded,
                      args, now)
        if found is not None:
            out.append(found)
            if len(out) >= spec.count:
                return out
    # the learnt candidates ran out (a narrow where:): the catalogue's order, bounded
    for n, item_id in enumerate(catalogue.first(FALLBACK_SCAN)):
        if item_id in scores:
            continue
        found = _kept(spec, catalogue, item_id, WEIGHT["catalogue"] / (1 + n),
                      lambda _: "catalogue", excluded, args, now)
        if found is not None:
            out.append(found)
            if len(out) >= spec.count:
                break
    return out


def _ranked(scores: dict[str, float]) -> list[str]:
    """Best first; ties in item order, so that a recommendation is repeatable."""
    return sorted(scores, key=lambda item: (-scores[item], item))


def _kept(spec: RecommendSpec, catalogue: Catalogue, item_id: str, score: float,
          reason: Callable[[str], str], excluded: set[str], args: tuple[Any, ...],
          now: float) -> RecommendedItem | None:
    """The item as recommended, unless excluded, gone from the catalogue, or refused by
    ``where`` (which never raises: a failure, logged, refuses it)."""
    if item_id in excluded:
        return None
    item = catalogue.items.get(item_id)
    if item is None:
        return None
    found = RecommendedItem(item_id, round(score, 6), reason(item_id), item)
    if spec.where is None:
        return found
    try:
        keep = spec.where(*args[:4], now, {"item": found.fields()})
    except Exception:  # a bug or bad item data: never crash, never recommend it
        log.exception("recommend's where failed on item %s", item_id)
        return None
    return found if keep is True else None
