"""Learned segments: recovery of planted clusters (adjusted Rand index).

    python -m bench.cluster_quality [--customers 1200] [--groups 4] [--days 90] [--seed 1]

A synthetic population of ``--groups`` planted behaviours (basket size, purchases a
month, visits a month), each customer's events over ``--days`` days tracked in time order
through an in-process Arbiter whose ruleset clusters on those three features (k = the
number of groups). At the end every customer is assigned with ``cluster.NAME`` as a
decision would, and compared with the planted group by the adjusted Rand index (1 = the
same partition, 0 = chance). The peer: batch k-means (k-means++, 10 restarts, Lloyd to
convergence) on the customers' *final* feature vectors, standardised, with all the data
at once, which the online learner never has.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from math import comb

import numpy as np

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.decide.clusters import features_of, profile_args
from engine.service import Arbiter

RULES = """
events: purchase, visit
cluster shoppers {{
  features: basket = coalesce(sum(purchase.value) / count(purchase), 0),
            monthly = count(purchase, within=30d), visits = count(visit, within=30d)
  k: {k}
}}
placement p {{ channels: web }}
action a {{ placements: p  value: 1  when: cluster.shoppers == 0 }}
"""
NOW = 1_780_000_000.0
BEHAVIOURS = ((12.0, 0.3, 16.0), (60.0, 2.0, 6.0), (220.0, 5.0, 10.0), (35.0, 8.0, 25.0),
              (400.0, 0.8, 3.0), (90.0, 4.0, 14.0))


def adjusted_rand_index(a: list[int], b: list[int]) -> float:
    """Hubert and Arabie's ARI from the contingency table of two labelings."""
    pairs = Counter(zip(a, b, strict=True))
    index = sum(comb(n, 2) for n in pairs.values())
    rows = sum(comb(n, 2) for n in Counter(a).values())
    cols = sum(comb(n, 2) for n in Counter(b).values())
    expected = rows * cols / comb(len(a), 2)
    top = (rows + cols) / 2
    return (index - expected) / (top - expected) if top != expected else 1.0


def batch_kmeans(data: np.ndarray, k: int, seed: int, restarts: int = 10) -> list[int]:
    rng = np.random.default_rng(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = [data[rng.integers(len(data))]]
        for _ in range(1, k):
            d2 = np.min([((data - c) ** 2).sum(axis=1) for c in centres], axis=0)
            centres.append(data[rng.choice(len(data), p=d2 / d2.sum())])
        c = np.array(centres)
        for _ in range(100):
            labels = ((data[:, None] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
            new = np.array([data[labels == i].mean(axis=0) if (labels == i).any() else c[i]
                            for i in range(k)])
            if np.allclose(new, c):
                break
            c = new
        inertia = float(((data - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    assert best is not None
    return [int(x) for x in best]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=1200)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    arb = Arbiter(load_text(RULES.format(k=args.groups)), MemoryStore(clock=lambda: NOW),
                  seed=1, clock=lambda: NOW)
    truth = {f"c{c}": rng.randrange(args.groups) for c in range(args.customers)}
    events = []
    for day in range(args.days):
        for user, group in truth.items():
            basket, monthly, visits = BEHAVIOURS[group]
            at = NOW - (args.days - day) * 86400 + rng.uniform(0, 80000)
            if rng.random() < visits / 30:
                events.append((at, user, "visit", 0.0))
            if rng.random() < monthly / 30:
                events.append((at + 60, user, "purchase", basket * rng.uniform(0.8, 1.2)))
    events.sort()
    started = time.perf_counter()
    for at, user, event, value in events:
        arb.track(user_id=user, event_type=event, at=at,
                  properties={"value": value} if value else {})
    arb.learn()
    seconds = time.perf_counter() - started
    spec = arb.ruleset.clusters["shoppers"]
    users = sorted(truth)
    vectors = []
    online = []
    for user in users:
        profile = arb.get_profile(user)
        x = features_of(spec, profile_args(arb.ruleset, profile, NOW)) if profile else {}
        vectors.append([x.get(f) or 0.0 for f in spec.features])
        assigned = arb.clusters.assign(spec, x)
        online.append(int(assigned) if isinstance(assigned, int) else -1)
    data = np.array(vectors)
    data = (data - data.mean(axis=0)) / np.where(data.std(axis=0) > 0, data.std(axis=0), 1)
    batch = batch_kmeans(data, args.groups, args.seed)
    planted = [truth[u] for u in users]
    metrics = arb.model_report()[-1].metrics
    print(f"{args.customers:,} customers, {args.groups} planted groups, {args.days} days, "
          f"{len(events):,} events ({seconds:.1f} s to track and learn)")
    print("| clustering | adjusted Rand index vs planted | silhouette (sample) |")
    print("|---|---:|---:|")
    print(f"| Arbiter, online (River KMeans, once a day per customer) | "
          f"{adjusted_rand_index(planted, online):.3f} | {metrics['silhouette']:.3f} |")
    print(f"| batch k-means on the final vectors (10 restarts) | "
          f"{adjusted_rand_index(planted, batch):.3f} | |")


if __name__ == "__main__":
    main()
