"""What a recorded decision and a learning-log entry cost in Redis, at two sizes.

    python -m bench.record_size [TREE ...] [--decisions 2000,20000] [--users 2000]

The retail example on a private ``redis-server`` (one per tree and size), ``--users``
customers seeded as the load generator seeds them, then the three-placement mix of
Decides, each shown decision recorded for feedback as the server records it. Prints,
per tree and number of decisions: the records written, Redis's ``used_memory`` growth per
record (the record, its key, its TTL and the customer's decision index), the mean
``MEMORY USAGE`` of a record key, the mean stored record in bytes, and the mean
learning-log entry of an impression fed back on every third shown decision. Given source
trees
(``git worktree add /tmp/before <commit>``), each runs its own code.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.load import IN_PROCESS_POPULATION, ROOT, run_in_tree
from tests.redis_proc import RedisServer

MEASURE = IN_PROCESS_POPULATION + r'''
import json, sys, time
from pathlib import Path
import redis
from adapters.redis_store import RedisStore
from bench.load import DAY
from bench.loadgen import decide_requests
from dsl.loader import load_path
from engine.grpc.decision_service import _decide_arguments
from engine.service import Arbiter

url, users, decisions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arb = Arbiter(load_path(Path("rulesets/retail")), RedisStore(url), seed=1)
now = time.time()
seed_population(_track_in_process, users)
client = redis.Redis.from_url(url)
before = int(client.info("memory")["used_memory"])
make = decide_requests(users, 7)
shown = []
for _ in range(decisions):
    d = arb.decide(**_decide_arguments(make()))
    if d.actions:
        shown.append(d)
after = int(client.info("memory")["used_memory"])
for d in shown[::3]:
    arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                 outcome="impression")
entries = client.xrevrange("arb:learn", count=min(500, len(shown[::3])))  # the feedback
entry = sum(len(fields[b"e"]) for _, fields in entries) / max(len(entries), 1)
keys = [k for k in client.scan_iter(match="arb:d:*", count=1000)]
sample = keys[:500]
usage = [int(client.memory_usage(k, samples=0) or 0) for k in sample]
stored = [len(client.get(k) or b"") for k in sample]
print(json.dumps({"records": len(keys), "bytes_per_record": (after - before) / max(len(keys), 1),
                  "key_memory_usage": sum(usage) / max(len(usage), 1),
                  "stored_bytes": sum(stored) / max(len(stored), 1), "log_entry": entry}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", type=Path, nargs="*", default=[ROOT])
    parser.add_argument("--decisions", default="2000,20000")
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    print("| tree | decisions | records | used_memory per record | MEMORY USAGE of a record "
          "| stored record | learning-log entry |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in (int(n) for n in args.decisions.split(",")):
        for tree in (t.resolve() for t in args.trees):
            with tempfile.TemporaryDirectory() as tmp:
                server = RedisServer(Path(tmp), "--appendonly", "no")
                server.start()
                try:
                    out = json.loads(run_in_tree(tree, MEASURE, server.url, str(args.users),
                                                 str(size)))
                finally:
                    server.stop()
            print(f"| {tree} | {size:,} | {out['records']:,} | "
                  f"{out['bytes_per_record']:,.0f} B | {out['key_memory_usage']:,.0f} B | "
                  f"{out['stored_bytes']:,.0f} B | {out['log_entry']:,.0f} B |")


if __name__ == "__main__":
    main()
