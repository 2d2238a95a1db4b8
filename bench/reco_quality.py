"""Recommendation quality, progressive: predict, then learn, in time order.

    python -m bench.reco_quality [--users 2000] [--items 500] [--events 30000] [--every 10]

A synthetic latent-factor population with a known optimum: items sit in categories
whose latent vectors share a centre, each customer has a taste vector, and each
interaction picks an item with probability proportional to ``exp(taste . item / T)``
times the item's popularity. Events from all customers are interleaved in time order.
Every ``--every``-th event (once warm), each recommender is asked for 10 items for that
customer, excluding what they already interacted with, *before* the event is learnt; a
hit is the event's item in the list. precision@10 = hits / 10, recall@10 = hits (one
held-out item per prediction). Compared on the same stream:

- **oracle**: the true 10 most likely items (the ceiling);
- **Arbiter**: ``recommend(10, exclude: view)`` as a decision runs it (candidates from
  co-occurrence, content, popularity; the BiasedMF ranks known customers);
- **popularity**: the most interacted items so far;
- **River BiasedMF, full scan**: River's ``reco.BiasedMF`` trained on the same events
  (with the same 2 sampled negatives), scoring every item of the catalogue;
- **random**: 10 unseen items at random (the floor).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dsl.ast import Pos
from dsl.ruleset import RecommendSpec
from engine.decide.catalogue import Catalogue
from engine.decide.recommend import Recommendations, recommend
from engine.learning.recommender import Recommender
from engine.records import LearningEvent, Profile, pseudonym, recent_items

K = 10


@dataclass
class World:
    tastes: np.ndarray  # users x d
    vectors: np.ndarray  # items x d
    boost: np.ndarray  # items: log popularity
    categories: list[int]
    temperature: float

    def probabilities(self, user: int) -> np.ndarray:
        logits = self.vectors @ self.tastes[user] / self.temperature + self.boost
        p = np.exp(logits - logits.max())
        return p / p.sum()


def make_world(users: int, items: int, seed: int, factors: int = 8, categories: int = 20
               ) -> World:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (categories, factors))
    cats = [int(c) for c in rng.integers(0, categories, items)]
    vectors = centres[cats] + rng.normal(0, 0.5, (items, factors))
    tastes = rng.normal(0, 1, (users, factors))
    boost = rng.normal(0, 0.7, items)
    return World(tastes, vectors, boost, cats, temperature=1.5)


def stream(world: World, events: int, seed: int) -> list[tuple[int, int]]:
    """(user, item) in time order; a user repeats an item rarely (a new draw instead)."""
    rng = np.random.default_rng(seed + 1)
    users = world.tastes.shape[0]
    seen: dict[int, set[int]] = {}
    out = []
    probs: dict[int, np.ndarray] = {}
    for _ in range(events):
        u = int(rng.integers(0, users))
        p = probs.get(u)
        if p is None:
            p = probs[u] = world.probabilities(u)
        item = int(rng.choice(len(p), p=p))
        if item in seen.setdefault(u, set()):
            item = int(rng.choice(len(p), p=p))
        seen[u].add(item)
        out.append((u, item))
    return out


class Scores:
    def __init__(self) -> None:
        self.hits = 0
        self.asked = 0
        self.seconds = 0.0

    def add(self, predicted: list[str], truth: str, seconds: float) -> None:
        self.asked += 1
        self.hits += truth in predicted[:K]
        self.seconds += seconds

    def row(self, name: str) -> str:
        recall = self.hits / max(self.asked, 1)
        return (f"| {name} | {recall / K:.4f} | {recall:.4f} | "
                f"{self.seconds / max(self.asked, 1) * 1e6:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=30000)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    world = make_world(args.users, args.items, args.seed)
    events = stream(world, args.events, args.seed)
    catalogue = Catalogue.build(
        [{"id": f"i{k}", "category": f"c{world.categories[k]}"} for k in range(args.items)], {})
    ours = Recommender()
    sources = Recommendations(catalogue, ours)
    spec = RecommendSpec(K, None, "", (("view", None),), Pos("bench", 1, 1))
    river_scan = Recommender()  # same learning; scored over every item below
    profiles: dict[int, Profile] = {}
    counts: Counter[str] = Counter()
    rng = random.Random(args.seed)
    names = ["oracle", "Arbiter recommend()", "popularity", "River BiasedMF, full scan",
             "random"]
    scores = {n: Scores() for n in names}
    all_items = [f"i{k}" for k in range(args.items)]
    for n, (u, item_index) in enumerate(events):
        user, item = f"u{u}", f"i{item_index}"
        profile = profiles.setdefault(u, Profile(user_id=user))
        seen = {i for _, i, _ in profile.items}
        if n >= args.warmup and n % args.every == 0:
            t = time.perf_counter()
            probs = world.probabilities(u)
            oracle = [f"i{k}" for k in np.argsort(-probs) if f"i{k}" not in seen][:K]
            scores["oracle"].add(oracle, item, time.perf_counter() - t)
            t = time.perf_counter()
            got = recommend(spec, sources, profile, pseudonym(user), ({}, {}, {}, {}), float(n))
            scores["Arbiter recommend()"].add([g.item_id for g in got], item,
                                              time.perf_counter() - t)
            t = time.perf_counter()
            popular = [i for i, _ in counts.most_common(K + len(seen)) if i not in seen][:K]
            scores["popularity"].add(popular, item, time.perf_counter() - t)
            t = time.perf_counter()
            key = pseudonym(user)
            scanned = sorted((i for i in all_items if i not in seen),
                             key=lambda i: -river_scan.model_score(key, i))[:K]
            scores["River BiasedMF, full scan"].add(scanned, item, time.perf_counter() - t)
            t = time.perf_counter()
            unseen = [i for i in all_items if i not in seen]
            scores["random"].add(rng.sample(unseen, min(K, len(unseen))), item,
                                 time.perf_counter() - t)
        history = recent_items(profile.items, 10, skip=item)
        profile.items.append((float(n), item, "view"))
        event = LearningEvent("", "", "view", float(n), float(n), user=pseudonym(user),
                              item_id=item, history=tuple(history))
        ours.learn(event)
        river_scan.learn(event)
        counts[item] += 1
    print(f"{args.users:,} customers, {args.items:,} items, {args.events:,} events, "
          f"{scores['oracle'].asked:,} predictions (every {args.every}th after "
          f"{args.warmup:,})")
    print("| recommender | precision@10 | recall@10 | µs per list |")
    print("|---|---:|---:|---:|")
    for name in names:
        print(scores[name].row(name))
    assert math.isfinite(scores["oracle"].hits)


if __name__ == "__main__":
    main()
