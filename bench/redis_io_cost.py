"""What Decide's Redis I/O alone costs: client CPU per decision, at a given concurrency.

    python -m bench.redis_io_cost [--concurrency 1,32] [--seconds 4]

A private ``redis-server`` (appendfsync always) holds 5,000 small profiles; ``C``
coroutines each loop on one decision's I/O as the server does it (the profile read,
the in-process cache off, then the decision record's write, through
:class:`~adapters.redis_decide_io.RedisDecideIO`: coalesced reads, group-committed
records). Prints, per concurrency, decisions/s, this process's CPU per decision and
the decisions a round trip carried: the part of a served Redis Decide that the
in-memory store does not pay (bench/RESULTS.md §27).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import redis

from adapters.redis_store import RedisStore
from engine.records import DecisionRecord, Profile, ShownAction, encode
from tests.redis_proc import RedisServer

USERS = 5000
SHOWN = [ShownAction("offer", 1, 0.5, 0.1, 5.0, experiment="exp", arm="offer",
                     reward="click")]


async def measure(store: RedisStore, concurrency: int, seconds: float) -> dict[str, float]:
    io = store.decide_io()
    done = 0
    end = 0.0

    async def worker(first: int) -> None:
        nonlocal done
        i = first
        while time.monotonic() < end:
            user = f"user-{i % USERS}"
            await io.get_profile(user, 1.0)
            await io.save_decision(DecisionRecord(f"d{i}", user, "home", "web", "rev",
                                                  time.time(), SHOWN), 3600, 1.0)
            done += 1
            i += concurrency

    result: dict[str, float] = {}
    for length in (1.0, seconds):  # a warm-up second, then the measured window
        done, trips = 0, io.round_trips
        end = time.monotonic() + length
        cpu = time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        cpu = time.process_time() - cpu
        result = {"concurrency": concurrency, "decisions_per_s": round(done / length),
                  "cpu_us_per_decision": round(cpu / max(done, 1) * 1e6, 1),
                  "decisions_per_round_trip": round(done / max(io.round_trips - trips, 1), 1)}
    await io.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            for i in range(USERS):
                client.set(f"arb:p:user-{i}", encode(Profile(user_id=f"user-{i}")))
            client.close()
            store = RedisStore(server.url, cache_ttl=0)
            for concurrency in map(int, args.concurrency.split(",")):
                print(json.dumps(asyncio.run(measure(store, concurrency, args.seconds))))
            store.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
