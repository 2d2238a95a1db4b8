"""What a marketplace's churn leaves behind: the store's catalogue after many changes that
each add an item and remove an old one, at two numbers of changes.

    python -m bench.catalogue_churn [--items 10000] [--changes 20000,60000]

On a private ``redis-server``, the retail example's keeper (``Arbiter.upsert_items`` and
``remove_items``, as ``UpsertItems``/``RemoveItems`` do) loads ``--items`` items, then
makes each number of changes: one call adds a new item, the next removes the oldest.
Prints, per number of changes, the entries of the store's items hash and the memory of
the catalogue's keys (``MEMORY USAGE``), what a replica started then reads and how long
its start's full read and build take, and what the writer's keeper holds. A store that
keeps every removal grows with the changes; one that forgets them past a horizon stays
the size of the catalogue.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import redis

from adapters.redis_store import RedisStore
from bench.load import ROOT, private_redis
from dsl.loader import load_path
from engine.service import Arbiter


def item(i: int) -> dict[str, object]:
    return {"id": f"sku-{i}", "name": f"Item {i}", "category": f"c{i % 20}",
            "price": 10.0}


def one_run(url: str, items: int, changes: int) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    ruleset = load_path(ROOT / "rulesets" / "retail")
    writer = Arbiter(ruleset, RedisStore(url, cache_ttl=0), seed=1)
    for start in range(0, items, 5000):
        writer.upsert_items([item(i) for i in range(start, min(items, start + 5000))])
    oldest = 0
    for n in range(changes):
        if n % 2 == 0:
            writer.upsert_items([item(items + n // 2)])
        else:
            writer.remove_items([f"sku-{oldest}"])
            oldest += 1
    keys = [k for k in client.scan_iter("arb:{items}*")]
    memory = sum(int(client.memory_usage(k) or 0) for k in keys)
    started = time.perf_counter()
    later = Arbiter(ruleset, RedisStore(url, cache_ttl=0), seed=1)
    start_read = time.perf_counter() - started
    print(f"| {changes:,} | {client.hlen('arb:{items}'):,} | {memory / 1e6:.1f} | "
          f"{len(later.catalogue.items):,} | {start_read * 1e3:.0f} | "
          f"{len(writer.catalogue_keeper._changes):,} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--changes", default="20000,60000")
    args = p.parse_args()
    print("| changes | items hash entries | catalogue keys MB | items served | "
          "a replica's start ms | writer keeper's entries |")
    print("|---:|---:|---:|---:|---:|---:|")
    with ExitStack() as stack:
        url = private_redis(stack)
        for changes in (int(c) for c in args.changes.split(",")):
            one_run(url, args.items, changes)


if __name__ == "__main__":
    main()
