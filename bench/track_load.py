"""TrackEvent throughput on Redis against the health-Check floor (item page views).

    python -m bench.track_load [--duration 4] [--server-tree DIR]
                               [--processes N --learners every|one]

Starts ``arbiter serve --redis`` (a private redis-server, as the tests start it) on the
retail ruleset from ``--server-tree`` (another checkout measures a "before"), then runs
the load generator (its own process) on the health ``Check`` and on ``TrackEvent``
(``page_view`` of a catalogue item: the profile, its item history and a learning-log
entry, in one transaction), concurrency 32; prints one Markdown row. With
``--processes N``, N serving processes (a snapshot key set, so ``--learners one`` can
be compared with ``every``); server CPU is every process's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.load import ROOT, arbiter_server, loadgen
from tests.redis_proc import RedisServer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--server-tree", type=Path, default=ROOT)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--learners", choices=("every", "one"), default="every")
    args = p.parse_args()
    os.environ.setdefault("ARBITER_SNAPSHOT_KEY", "bench key")
    extra = ("--processes", str(args.processes), "--learners", args.learners)
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            with arbiter_server(redis.url, 4, tree=args.server_tree,
                                extra=extra) as (target, pid):
                floor = loadgen(target, pid, "check", args)
                track = loadgen(target, pid, "track", args)
        finally:
            redis.stop()
    print("| Check req/s (floor) | TrackEvent req/s | ratio | p50 ms | p99 ms | server CPU µs "
          "| errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {floor['rps']:.0f} | {track['rps']:.0f} | {track['rps'] / floor['rps']:.2f} | "
          f"{track['p50_ms']:.2f} | {track['p99_ms']:.2f} | {track['server_cpu_us']:.0f} | "
          f"{track['errors']} |")


if __name__ == "__main__":
    main()
