"""How long one full collection of the cyclic GC holds the process, at two heap sizes,
before and after :func:`engine.grpc.heap.settle` (what ``arbiter serve`` does at start-up
and after each ruleset swap).

    python -m bench.heap_pause [--sizes 1000,20000] [--interactions 50000,200000]
    python -m bench.heap_pause --customers 20000,200000

For each size, the in-process Arbiter of :mod:`bench.reco_scaling` (a catalogue of that
many items, that many item views learnt by the recommender) is built; then the median
of 5 ``gc.collect()`` calls is timed as loaded, and again after ``settle()``. Every
request in flight waits behind a full collection, so it is a floor under the p99.

``--customers``: what serving adds after ``settle()``. The retail example on the
in-memory store, settled as ``arbiter serve`` starts; then each customer a TrackEvent
(an item view), a ``homepage_banner`` Decide and an impression fed back, learnt; the
objects the collector tracks and a full collection, at each count (the same process,
growing).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from bench.reco_scaling import populated
from engine.grpc import heap
from engine.service import Arbiter


def full_collection_ms() -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def serve_customers(arb: Arbiter, start: int, stop: int, at: float) -> None:
    """Customers ``c<start>`` to ``c<stop - 1>``: each an item view tracked at ``at``, a
    ``homepage_banner`` decision and an impression fed back; learnt every 1,000 and at the
    end."""
    for i in range(start, stop):
        arb.track(user_id=f"c{i}", event_type="page_view", item_id=f"sku-{i % 29:03d}", at=at)
        decision = arb.decide(user_id=f"c{i}", placement="homepage_banner", channel="web")
        for action in decision.actions[:1]:
            arb.feedback(decision_id=decision.decision_id, action_id=action.action_id,
                         outcome="impression", idempotency_key=f"k{i}")
        if i % 1000 == 999:
            arb.learn()
    arb.learn()


def customers_pause(counts: list[int]) -> None:
    from pathlib import Path

    from adapters.memory import MemoryStore
    from dsl.loader import load_path

    arb = Arbiter(load_path(Path(__file__).parent.parent / "rulesets/retail"), MemoryStore(),
                  seed=1)
    heap.settle()
    now, done = time.time(), 0
    print("| customers | tracked objects | full collection ms |")
    print("|---:|---:|---:|")
    for count in counts:
        serve_customers(arb, done, count, now - 60)
        done = count
        gc.collect()
        print(f"| {count:,} | {len(gc.get_objects()):,} | {full_collection_ms():.1f} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,20000")
    p.add_argument("--interactions", default="50000,200000")
    p.add_argument("--customers", default="",
                   help="counts of customers served after settle(), e.g. 20000,200000")
    args = p.parse_args()
    if args.customers:
        customers_pause([int(n) for n in args.customers.split(",")])
        return
    print("| catalogue | interactions | tracked objects | full collection ms | "
          "after settle() ms | objects left to walk |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, interactions in zip((int(s) for s in args.sizes.split(",")),
                                  (int(n) for n in args.interactions.split(",")), strict=True):
        gc.unfreeze()
        arb = populated(size, interactions)
        tracked = len(gc.get_objects())
        before = full_collection_ms()
        heap.settle()
        after = full_collection_ms()
        left = len(gc.get_objects())
        print(f"| {size:,} | {interactions:,} | {tracked:,} | {before:.1f} | {after:.2f} | "
              f"{left:,} |")
        del arb


if __name__ == "__main__":
    main()
