"""What learning costs a process with ``--learners every`` and with ``--learners one``.

    python -m bench.learners_cost [--customers 2000,20000] [--rounds 3]

In process, the retail example on the in-memory store: ``--customers`` seeded customers,
each then shown the three-placement mix and given feedback (an impression on every shown
decision, a click on every third) and an item view. Learning the log is what every
process pays per event with ``every``; with ``one`` only the learner pays it, and publishes
its state every 5 s (pickled and signed), which each other process adopts (verified and
unpickled). Prints, per size: events, µs per event learnt, the snapshot's bytes, ms to
publish and ms to adopt it (best of ``--rounds``), and the event rate above which a
follower's adoptions cost less than learning every event itself.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from adapters.memory import MemoryStore
from bench.load import DAY, seed_population
from bench.loadgen import decide_requests
from dsl.loader import load_path
from engine.grpc.decision_service import _decide_arguments
from engine.learning import consumer
from engine.service import Arbiter

ROOT = Path(__file__).resolve().parent.parent
KEY = b"bench key"


def fill(store: MemoryStore, customers: int) -> int:
    """Log a day of traffic for ``customers`` (not learnt yet); returns the log's events."""
    arb = Arbiter(load_path(ROOT / "rulesets" / "retail"), store, seed=1, snapshot_key=KEY)
    now = time.time()
    seed_population(lambda user, event, ago, value: arb.track(
        user_id=user, event_type=event, at=now - ago,
        properties={"value": value} if value else None), customers)
    rng = random.Random(7)
    items = list(arb.catalogue.items)
    make = decide_requests(customers, 7)
    for n in range(customers * 2):
        decision = arb.decide(**_decide_arguments(make()))
        arb.track(user_id=decision.user_id, event_type="page_view",
                  item_id=rng.choice(items), at=now - DAY / 2)
        for action in decision.actions[:1]:
            arb.feedback(decision_id=decision.decision_id, action_id=action.action_id,
                         outcome="click" if n % 3 == 0 else "impression")
    return len(store.learning_events("", 10**9))


def measure(customers: int, rounds: int) -> dict[str, float]:
    store = MemoryStore(log_max_entries=0)
    events = fill(store, customers)
    ruleset = load_path(ROOT / "rulesets" / "retail")
    consumer.PUBLISH_SECONDS = 10**9  # published below, by hand
    started = time.perf_counter()
    learner = Arbiter(ruleset, store, seed=2, snapshot_key=KEY, learners="one")
    learnt_us = (time.perf_counter() - started) / events * 1e6  # (made, then learnt all)
    publish, adopt, size = [], [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        learner.learner.snapshot()
        publish.append(time.perf_counter() - started)
        size = len((store.load_models() or (b"", ""))[0])
        follower = Arbiter(ruleset, store, seed=3, snapshot_key=KEY, learners="one")
        follower.learner.offset = ""  # as a follower that had not seen it
        started = time.perf_counter()
        assert follower.learner.adopt()
        adopt.append(time.perf_counter() - started)
    adopt_ms = min(adopt) * 1e3
    return {"customers": customers, "events": events, "learn_us_per_event": round(learnt_us, 1),
            "snapshot_bytes": size, "publish_ms": round(min(publish) * 1e3, 1),
            "adopt_ms": round(adopt_ms, 1),
            "break_even_events_per_s": round(adopt_ms * 1e3 / 5.0 / learnt_us)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", default="2000,20000")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rows = [measure(int(c), args.rounds) for c in args.customers.split(",")]
    for row in rows:
        print(json.dumps(row))
    print("| customers | events | µs per event learnt | snapshot | publish ms | adopt ms "
          "| break-even events/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['customers']:,} | {r['events']:,} | {r['learn_us_per_event']} | "
              f"{r['snapshot_bytes'] / 1e6:.2f} MB | {r['publish_ms']} | {r['adopt_ms']} | "
              f"{r['break_even_events_per_s']:,} |")


if __name__ == "__main__":
    main()
