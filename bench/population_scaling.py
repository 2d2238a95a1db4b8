"""The cost of percentile() and best_send_hour() per decision at two population sizes.

    python -m bench.population_scaling [--sizes 1000,100000] [--decisions 3000]

For each size, an in-process Arbiter (memory store) gets that many customers, each with
purchases and engagements spread over the week, syncs the population statistics, then
decides ``--decisions`` times on a placement whose segment reads
``percentile(sum(purchase.value), 80)`` and whose content renders ``best_send_hour()``,
against the same ruleset without them. Prints µs per decision (best of 3 runs) and the
histogram's size: the claim is that neither grows with the population.
"""

from __future__ import annotations

import argparse
import random
import time

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.service import Arbiter

BASE = """
profile { timezone: string }
events: purchase, visit
placement mail { channels: email }
action digest { placements: mail  value: 1  content { subject: "News" } }
"""
WITH = BASE + """
segment top = sum(purchase.value) >= percentile(sum(purchase.value), 80)
action vip { placements: mail  value: 5  when: top
  content { subject: "For you"  hour: "{{ best_send_hour() }}" } }
"""
WITHOUT = BASE + """
segment top = sum(purchase.value) >= 500
action vip { placements: mail  value: 5  when: top  content { subject: "For you" } }
"""
NOW = 1_767_614_400.0


def populated(rules: str, customers: int, seed: int = 1) -> Arbiter:
    rng = random.Random(seed)
    arb = Arbiter(load_text(rules), MemoryStore(clock=lambda: NOW), seed=1,
                  clock=lambda: NOW)
    for i in range(customers):
        arb.track(user_id=f"c{i}", event_type="purchase",
                  properties={"value": round(rng.lognormvariate(4, 1), 2)},
                  at=NOW - rng.uniform(0, 7 * 86400))
    arb.sync()
    return arb


def per_decision(arb: Arbiter, customers: int, decisions: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(decisions):
            arb.decide(user_id=f"c{i % customers}", placement="mail", channel="email")
        best = min(best, (time.perf_counter() - started) / decisions)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--decisions", type=int, default=3000)
    args = p.parse_args()
    print("| customers | without µs | with percentile + send hour µs | ratio | histogram buckets |")
    print("|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        plain = populated(WITHOUT, size)
        rich = populated(WITH, size)
        a = per_decision(plain, size, args.decisions)
        b = per_decision(rich, size, args.decisions)
        buckets = len(rich.store.add_counters("pct:sum:purchase", {}))
        print(f"| {size:,} | {a:.1f} | {b:.1f} | {b / a:.2f} | {buckets} |")


if __name__ == "__main__":
    main()
