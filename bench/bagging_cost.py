"""What ``model { bagging: K }`` costs a decision, in process, cold and trained.

    python -m bench.bagging_cost [--members 10] [--passes 3]

The retail example's ``homepage_banner`` (an experiment with Thompson sampling, so the
exact first-slot probability is computed) on the in-memory store, for the load
generator's population (5,000 customers: loyal, cart abandoners, readers, occasional,
unknown). Four cases, each in its own process: the plain placement, the same after 3,000
decisions with impressions and clicks learnt (trained: each candidate predicted by its
action's logistic model), the placement with a bag of ``--members`` whose models have no
data yet (cold start), and the bag trained the same way. Each prints the best of
``--passes`` passes over 3,000 requests (parse, servicer arguments, ``Arbiter.decide``,
response), pinned to one core where ``taskset`` exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.load import IN_PROCESS_POPULATION, ROOT, TIMED_PASSES, run_in_tree

CASE = IN_PROCESS_POPULATION + r'''
import json, sys, time
from pathlib import Path
from adapters.memory import MemoryStore
from bench.load import DAY
from dsl.loader import load_path
from engine.grpc import convert
from engine.grpc.decision_service import _decide_arguments
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.service import Arbiter

rules, trained, passes = Path(sys.argv[1]), sys.argv[2] == "trained", int(sys.argv[3])
arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
now = time.time()
seed_population(_track_in_process, 5000)  # bench.load.seed_profiles' population
if trained:
    for i in range(3000):
        d = arb.decide(user_id=f"user-{i % 5000}", placement="homepage_banner", channel="web")
        if d.actions:
            top = d.actions[0].action_id
            arb.feedback(decision_id=d.decision_id, action_id=top, outcome="impression")
            if i % 7 == 0:
                arb.feedback(decision_id=d.decision_id, action_id=top, outcome="click")
    arb.learn()
requests = [pb.DecideRequest(user_id=f"user-{i}", placement="homepage_banner", channel="web")
            for i in range(3000)]

''' + TIMED_PASSES


def run(rules: Path, trained: bool, passes: int) -> float:
    return float(json.loads(run_in_tree(ROOT, CASE, str(rules),
                                        "trained" if trained else "cold", str(passes))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bagged = Path(tmp) / "rules"
        shutil.copytree(ROOT / "rulesets/retail", bagged)
        (bagged / "model.arb").write_text(
            f"model on homepage_banner {{ bagging: {args.members} }}\n")
        plain = run(ROOT / "rulesets/retail", False, args.passes)
        rows = [("plain", plain),
                ("plain, trained", run(ROOT / "rulesets/retail", True, args.passes)),
                (f"bagging {args.members}, cold", run(bagged, False, args.passes)),
                (f"bagging {args.members}, trained", run(bagged, True, args.passes))]
    print("| case | µs per decision | / plain |")
    print("|---|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} | {us / plain:.2f} |")


if __name__ == "__main__":
    main()
