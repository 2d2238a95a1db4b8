"""What a replica's first read of a large catalogue costs the shared Redis: its time,
and the longest PING another process waits meanwhile (what every replica's Decides wait).

    python -m bench.catalogue_full_read [--items 1000000]

On a private ``redis-server``, ``--items`` items are upserted (10,000 a change), then the
whole catalogue is read twice as a starting replica reads it (``catalogue_changes(0)``)
while another process PINGs every millisecond. Prints the read's time, the longest PING
and Redis's time per call of the commands it used. Run from another checkout's folder
to measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from typing import Any

import redis

from adapters.redis_store import RedisStore
from bench.load import private_redis
from engine.decide.catalogue import encode_item

COMMANDS = ("hgetall", "zrange", "exec", "hscan", "zscan", "hmget", "zmscore")


def ping(url: str, stop: Any, out: Any) -> None:
    other = redis.Redis.from_url(url)
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        other.ping()
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.001)
    out.put(worst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        url = private_redis(stack)
        store = RedisStore(url, cache_ttl=0)
        for start in range(0, args.items, 10_000):
            store.change_items({f"sku-{i}": encode_item({
                "id": f"sku-{i}", "name": f"Item {i}", "category": f"c{i % 20}",
                "price": 10.0}) for i in range(start, min(args.items, start + 10_000))}, ())
        client = redis.Redis.from_url(url)
        for _ in range(2):
            stop = multiprocessing.Event()
            out: multiprocessing.Queue[float] = multiprocessing.Queue()
            pinger = multiprocessing.Process(target=ping, args=(url, stop, out))
            pinger.start()
            time.sleep(0.5)
            client.config_resetstat()
            started = time.perf_counter()
            read = store.catalogue_changes(0)
            took = time.perf_counter() - started
            stop.set()
            worst = out.get()
            pinger.join()
            stats = {name[8:]: round(value["usec_per_call"] / 1e3, 1)
                     for name, value in client.info("commandstats").items()
                     if name[8:] in COMMANDS}
            print(f"full read {took:.2f} s, {len(read[1] or ())} items; longest PING "
                  f"meanwhile {worst * 1e3:.1f} ms; Redis ms per call {stats}", flush=True)


if __name__ == "__main__":
    main()
