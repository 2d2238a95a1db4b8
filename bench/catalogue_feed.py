"""Decide while a feed upserts catalogue items one at a time, at two catalogue sizes.

    python -m bench.catalogue_feed [--sizes 10000,100000]
                                   [--feed changed|new|removed|moved] [--server-tree DIR]

Serves the retail example on the in-memory store, loads ``--sizes`` items through
UpsertItems (10,000 a call), then for 5 s one client decides ``homepage_banner`` in a
closed loop while another, every 50 ms, upserts one changed item (a product feed's new
price), upserts a new item (``--feed new``: a marketplace), removes one (``--feed
removed``) or moves one to the next category (``--feed moved``: a re-categorised or
re-tagged product). Prints, per size, the upserts' median and slowest time and the
Decides' count, median and slowest: a change the catalogue cannot apply in place
rebuilds it, O(items), and where that runs decides what else waits for it.
``--server-tree`` serves another checkout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import grpc

from bench.load import ROOT, arbiter_server, deciding
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

CATEGORIES = ("shoes", "bags", "coats", "hats", "watches")


def item(i: int, price: float, moved: int = 0) -> pb.Item:
    return pb.Item(id=f"feed-{i}", attributes={
        "name": pb.Value(string_value=f"Item {i}"),
        "category": pb.Value(string_value=CATEGORIES[(i + moved) % len(CATEGORIES)]),
        "price": pb.Value(number_value=price)})


def one_size(tree: Path, size: int, feed: str, seconds: float = 5.0) -> None:
    with arbiter_server(None, 4, tree=tree, extra=("--processes", "1")) as (target, _), \
            grpc.insecure_channel(target) as channel:
        catalogue = pb_grpc.CatalogueServiceStub(channel)
        for start in range(0, size, 10_000):
            catalogue.UpsertItems(pb.UpsertItemsRequest(
                items=[item(i, 10.0) for i in range(start, min(size, start + 10_000))]),
                timeout=120)
        upserted: list[float] = []
        with deciding(channel) as decided:
            ends, n = time.perf_counter() + seconds, 0
            while time.perf_counter() < ends:
                started = time.perf_counter()
                if feed == "removed":
                    catalogue.RemoveItems(pb.RemoveItemsRequest(item_ids=[f"feed-{n}"]))
                else:
                    catalogue.UpsertItems(pb.UpsertItemsRequest(items=[
                        item(size + n if feed == "new" else n % size, 11.0 + n,
                             moved=1 + n // size if feed == "moved" else 0)]))
                upserted.append(time.perf_counter() - started)
                n += 1
                time.sleep(max(0.0, 0.05 - (time.perf_counter() - started)))
    print(f"| {size:,} | {len(upserted)} | {statistics.median(upserted) * 1e3:.1f} | "
          f"{max(upserted) * 1e3:.1f} | {len(decided)} | "
          f"{statistics.median(decided) * 1e3:.2f} | {max(decided) * 1e3:.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--feed", choices=("changed", "new", "removed", "moved"), default="changed")
    p.add_argument("--server-tree", type=Path, default=ROOT)
    args = p.parse_args()
    print("| items | upserts | upsert median ms | slowest ms | Decides | Decide median ms | "
          "slowest ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        one_size(args.server_tree, size, args.feed)


if __name__ == "__main__":
    main()
