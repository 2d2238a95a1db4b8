"""The cost of ``items: recommend(10, ...)`` per decision at two catalogue sizes.

    python -m bench.reco_scaling [--sizes 1000,10000] [--interactions 50000] [--decisions 2000]

For each size, an in-process Arbiter (memory store) gets a catalogue of that many items
(100 categories, Zipf popularity) and ``--interactions`` item views from 5,000 customers
who browse within a few favourite categories, learnt through the log; then it decides
``--decisions`` times for those customers on a placement whose action recommends 10
items (``where: item.in_stock``, ``exclude: purchase within 30d``), against the same
placement whose action has no items (the floor). Prints µs per decision (best of 3)
and the ratio: the claim is that it does not grow with the catalogue (candidates come
from precomputed neighbours, never from a scan).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from adapters.memory import MemoryStore
from dsl.loader import load_sources
from engine.service import Arbiter

RULES = """
items { name: string  category: string  price: number  in_stock: bool = true }
events: view, purchase
placement shop { channels: web }
placement plain { channels: web }
action picks {
  placements: shop
  value: 1
  items: recommend(10, where: item.in_stock, exclude: purchase within 30d)
  content { list: html "{% for item in recommended %}<li>{{ item.name }}</li>{% end %}" }
}
action banner { placements: plain  value: 1  content { text: "Hello" } }
"""
NOW = 1_780_000_000.0
CUSTOMERS = 5000


def populated(items: int, interactions: int, seed: int = 1) -> Arbiter:
    rng = random.Random(seed)
    catalogue = "\n".join(json.dumps({
        "id": f"i{k}", "name": f"Item {k}", "category": f"c{k % 100}",
        "price": float(1 + k % 300), "in_stock": k % 17 != 0}) for k in range(items))
    arb = Arbiter(load_sources({"b/rules.arb": RULES, "b/items.jsonl": catalogue}),
                  MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    per_category = items // 100
    weights = [1.0 / (r + 1) for r in range(per_category)]  # Zipf within a category
    favourites = {c: rng.sample(range(100), 3) for c in range(CUSTOMERS)}
    for n in range(interactions):
        customer = rng.randrange(CUSTOMERS)
        category = rng.choice(favourites[customer])
        rank = rng.choices(range(per_category), weights)[0]
        arb.track(user_id=f"c{customer}", event_type="view", item_id=f"i{rank * 100 + category}",
                  at=NOW - (interactions - n))
        if n % 5000 == 0:
            arb.learn()
    arb.learn()
    return arb


def per_decision(arb: Arbiter, placement: str, decisions: int, customer: str = "c") -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(decisions):
            arb.decide(user_id=f"{customer}{i % CUSTOMERS}", placement=placement,
                       channel="web")
        best = min(best, (time.perf_counter() - started) / decisions)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--interactions", type=int, default=50000)
    p.add_argument("--decisions", type=int, default=2000)
    args = p.parse_args()
    print("| catalogue | interactions | floor (no items) µs | recommend(10) µs | ratio | "
          "new customers µs | pairs kept |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        arb = populated(size, args.interactions)
        floor = per_decision(arb, "plain", args.decisions)
        rich = per_decision(arb, "shop", args.decisions)
        new = per_decision(arb, "shop", args.decisions, customer="new")
        pairs = int(arb.recommender.stats()["pairs"])
        print(f"| {size:,} | {args.interactions:,} | {floor:.1f} | {rich:.1f} | "
              f"{rich / floor:.2f} | {new:.1f} | {pairs:,} |")


if __name__ == "__main__":
    main()
