"""What one catalogue change costs in process, by kind, at two catalogue sizes.

    python -m bench.catalogue_changes [--sizes 100000,1000000] [--changes 2000]

Builds a catalogue of N items (20 categories, 3 of 50 tags each), then applies
``--changes`` changes one at a time through ``Catalogue.updated``, as the keeper does
after each UpsertItems or RemoveItems: a new price, a new item, a removal, an item moved
to another category, an item given another tag. Prints per size and kind the mean, median
and slowest change in ms (the slowest is a fold: the changes carried so far merged into
new shared structures, about once per √N changes), and a full build's time, which a change
the catalogue cannot apply in place costs instead (``gone, back``: every other change an
item back after its removal, which goes last). Run from another checkout's folder to
measure it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine.decide.catalogue import Catalogue

CATEGORIES = 20
TAGS = 50


class Rebuilt(Exception):
    """The catalogue could not apply a change in place."""


def item(i: int, rng: random.Random, **changes: Any) -> dict[str, Any]:
    return {"id": f"sku-{i}", "category": f"c{i % CATEGORIES}", "price": 10.0,
            "tags": [f"t{(i * 7 + k) % TAGS}" for k in range(3)], **changes}


Change = Callable[[int], tuple[dict[str, Any], set[str], set[str]]]
"""The n-th change: the delta, the ids new to the catalogue, the ids back after a removal."""


def timed(catalogue: Catalogue, count: int, change: Change) -> list[float]:
    took = []
    for n in range(count):
        delta, new, back = change(n)
        started = time.perf_counter()
        updated = catalogue.updated(delta, catalogue.version + 1, new, back)
        took.append(time.perf_counter() - started)
        if updated is None:
            raise Rebuilt  # (this checkout builds the whole catalogue for such a change)
        catalogue = updated
    return took


def one_size(size: int, count: int) -> None:
    rng = random.Random(1)
    items = [item(i, rng) for i in range(size)]
    started = time.perf_counter()
    Catalogue.build(items, {})
    built = time.perf_counter() - started
    kinds: dict[str, Change] = {
        "price": lambda n: ({f"sku-{n}": item(n, rng, price=11.0 + n)}, set(), set()),
        "new": lambda n: ({f"sku-{size + n}": item(size + n, rng)}, {f"sku-{size + n}"},
                          set()),
        "removed": lambda n: ({f"sku-{n * 3}": None}, set(), set()),
        "moved": lambda n: ({f"sku-{n}": item(n, rng, category=f"c{(n + 1) % CATEGORIES}")},
                            set(), set()),
        "retagged": lambda n: ({f"sku-{n}": item(n, rng, tags=["sale"])}, set(), set()),
        "gone, back": lambda n: (  # (a removal, then the item back: it goes last)
            ({f"sku-{n // 2}": None}, set(), set()) if n % 2 == 0 else
            ({f"sku-{n // 2}": item(n // 2, rng)}, set(), {f"sku-{n // 2}"})),
    }
    for kind, change in kinds.items():
        try:
            took = timed(Catalogue.build(items, {}), count, change)
        except Rebuilt:
            print(f"| {size:,} | {kind} | (a full build) | | | {built * 1e3:.0f} |")
            continue
        print(f"| {size:,} | {kind} | {statistics.mean(took) * 1e3:.3f} | "
              f"{statistics.median(took) * 1e3:.3f} | {max(took) * 1e3:.1f} | "
              f"{built * 1e3:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--changes", type=int, default=2000)
    args = p.parse_args()
    print("| items | change | mean ms | median ms | slowest ms | full build ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        one_size(size, args.changes)


if __name__ == "__main__":
    main()
