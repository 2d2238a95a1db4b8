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

import logging
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
POPULAR = 100
"""Popular items considered for every customer."""
MAX_CANDIDATES = 400
"""Candidates scored and filtered per recommendation, at most."""
SCALE = {"co-occurrence": 1.0, "content": 0.1, "popularity": 0.01, "catalogue": 0.001}
"""Each source's scores are in [0, 1], times its scale: a stronger source always wins."""


class Recommendations:
    """What recommend() reads: the catalogue and the learnt recommender."""

    __slots__ = ("catalogue", "recommender")

    def __init__(self, catalogue: Catalogue, recommender: Recommender) -> None:
        self.catalogue = catalogue
        self.recommender = recommender


def _excluded(spec: RecommendSpec, profile: Profile | None, now: float) -> set[str]:
    if not spec.exclude or profile is None:
        return set()
    out = set()
    for at, item_id, event in profile.items:
        for name, window in spec.exclude:
            if event == name and (window is None or now - at <= window):
                out.add(item_id)
    return out


def candidates(sources: Recommendations, seeds: list[str]) -> dict[str, tuple[float, str]]:
    """item -> (score, reason) from every source, the strongest source kept per item."""
    out: dict[str, tuple[float, str]] = {}
    recommender, catalogue = sources.recommender, sources.catalogue

    def add(item: str, score: float, reason: str) -> None:
        scaled = score * SCALE[reason]
        old = out.get(item)
        if old is None or scaled > old[0]:
            out[item] = (scaled, reason)

    for rank, seed in enumerate(seeds):
        recency = 1.0 / (1.0 + 0.2 * rank)  # the newest items count most
        for item, similarity in recommender.neighbours(seed):
            co = out.get(item)
            if co is not None and co[1] == "co-occurrence":  # evidence from several seeds adds
                out[item] = (co[0] + similarity * recency / len(seeds), "co-occurrence")
            else:
                add(item, similarity * recency, "co-occurrence")
        for item, similarity in catalogue.similar(seed):
            add(item, similarity * recency, "content")
        if len(out) >= MAX_CANDIDATES:
            break
    for item, share in recommender.popular(POPULAR):
        add(item, share, "popularity")
    if len(out) < POPULAR:  # nothing learnt yet: the catalogue itself, in order
        for n, item in enumerate(catalogue.first(POPULAR)):
            add(item, 1.0 / (1 + n), "catalogue")
    return out


def recommend(spec: RecommendSpec, sources: Recommendations, profile: Profile | None,
              user_key: str, args: tuple[Any, ...], now: float) -> list[RecommendedItem]:
    """The action's items for this customer, best first (``args`` are the rules'
    arguments; ``where`` reads the item as ``item``)."""
    catalogue, recommender = sources.catalogue, sources.recommender
    history = profile.items if profile is not None else []
    seeds = recent_items(history, SEEDS)
    pool = candidates(sources, seeds)
    excluded = _excluded(spec, profile, now)
    if recommender.knows(user_key):  # the model ranks what the sources proposed
        pool = {item: (recommender.model_score(user_key, item), "model") for item in pool}
    ranked = sorted(pool.items(), key=lambda entry: (-entry[1][0], entry[0]))
    out: list[RecommendedItem] = []
    A, C, E, S = args[:4]
    for item_id, (score, reason) in ranked:
        if item_id in excluded:
            continue
        item = catalogue.items.get(item_id)
        if item is None:
            continue
        found = RecommendedItem(item_id, round(score, 6), reason, item)
        if spec.where is not None:
            try:
                keep = spec.where(A, C, E, S, now, {"item": found.fields()})
            except Exception:  # a bug or bad item data: never crash, never recommend it
                log.exception("recommend's where failed on item %s", item_id)
                keep = None
            if keep is not True:
                continue
        out.append(found)
        if len(out) >= spec.count:
            break
    return out
