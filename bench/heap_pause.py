"""How long one full collection of the cyclic GC holds the process, at two heap sizes,
before and after :func:`engine.grpc.heap.settle` (what ``arbiter serve`` does at start-up
and after each ruleset swap).

    python -m bench.heap_pause [--sizes 1000,20000] [--interactions 50000,200000]

For each size, the in-process Arbiter of :mod:`bench.reco_scaling` (a catalogue of that
many items, that many item views learnt by the recommender) is built; then the median
of 5 ``gc.collect()`` calls is timed as loaded, and again after ``settle()``. Every
request in flight waits behind a full collection, so it is a floor under the p99.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from bench.reco_scaling import populated
from engine.grpc import heap


def full_collection_ms() -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,20000")
    p.add_argument("--interactions", default="50000,200000")
    args = p.parse_args()
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
