"""Redis memory under a steady stream of decisions, at several attribution windows.

    python -m bench.attribution_memory [--windows 10s,30s,none] [--seconds 60] [--rate 300]

The retail example on a private ``redis-server`` per window, ``homepage_banner`` with
``attribution: W`` (``none``: without, the server's 7 days), decided in process at
``--rate`` decisions a second for ``--seconds`` over 5,000 customers, an impression fed
back on every decision that showed something (so each also keeps its idempotency key).
Prints every 5 s per window: the decision records and idempotency keys held, and Redis's
``used_memory`` less the learning log (which every feedback appends to whatever the
window, bounded by ``--learning-log-max``): with a window the records, keys and memory
level off at about rate x window; without, they grow for as long as the run (for 7
days in production).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import redis

from adapters.redis_store import RedisStore
from dsl.loader import load_path
from engine.service import Arbiter
from tests.redis_proc import RedisServer

ROOT = Path(__file__).resolve().parent.parent
USERS = 5000
SAMPLE_EVERY = 5.0


def ruleset_with(window: str, directory: Path) -> Path:
    """A copy of the retail example whose ``homepage_banner`` has ``attribution: window``
    (``none``: unchanged)."""
    rules = directory / "retail"
    shutil.copytree(ROOT / "rulesets" / "retail", rules)
    if window != "none":
        schema = rules / "schema.arb"
        text = schema.read_text()
        head = "placement homepage_banner {\n"
        if head not in text:
            raise SystemExit("the retail example's homepage_banner placement has moved")
        schema.write_text(text.replace(head, f"{head}  attribution: {window}\n", 1))
    return rules


def run(window: str, seconds: float, rate: float) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), "--appendonly", "no")
        server.start()
        try:
            arb = Arbiter(load_path(ruleset_with(window, Path(tmp))),
                          RedisStore(server.url), seed=1)
            client = redis.Redis.from_url(server.url)
            base = int(client.info("memory")["used_memory"])
            samples: list[dict[str, float]] = []
            start = time.monotonic()
            due, done = start + SAMPLE_EVERY, 0
            while (now := time.monotonic()) < start + seconds:
                if done > (now - start) * rate:  # paced: the rate, not as fast as it goes
                    time.sleep(0.002)
                    continue
                d = arb.decide(user_id=f"user-{done % USERS}", placement="homepage_banner",
                               channel="web")
                if d.actions:
                    arb.feedback(decision_id=d.decision_id,
                                 action_id=d.actions[0].action_id, outcome="impression")
                done += 1
                if now >= due:
                    due += SAMPLE_EVERY
                    used = int(client.info("memory")["used_memory"]) - base
                    log = int(client.memory_usage("arb:learn", samples=0) or 0)
                    samples.append({
                        "t": round(now - start), "decisions": done,
                        "used_less_log_mb": round((used - log) / 1e6, 2),
                        "records": sum(1 for _ in client.scan_iter("arb:d:*", 1000)),
                        "keys": sum(1 for _ in client.scan_iter("arb:k:*", 1000))})
            client.close()
            return samples
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", default="10s,30s,none")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=300.0)
    args = parser.parse_args()
    results = {w: run(w, args.seconds, args.rate) for w in args.windows.split(",")}
    for window, samples in results.items():
        for sample in samples:
            print(json.dumps({"window": window, **sample}))
    print("| window | " + " | ".join(f"{s['t']:.0f} s" for s in next(iter(results.values())))
          + " |")
    print("|---|" + "---:|" * len(next(iter(results.values()))))
    for window, samples in results.items():
        print(f"| {window} | " + " | ".join(
            f"{s['records']:,} / {s['keys']:,} / {s['used_less_log_mb']:.1f} MB"
            for s in samples) + " |")


if __name__ == "__main__":
    main()
