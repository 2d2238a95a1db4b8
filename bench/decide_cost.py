"""What one decision costs in process, per placement, and a fingerprint of what it decides.

    python -m bench.decide_cost [TREE ...] [--rounds 2] [--passes 5] [--golden]

The retail example on the in-memory store with the load generator's population (5,000
customers: loyal, cart abandoners, readers, occasional, unknown; the clusters learnt),
decisions read as the server reads them (arm counters pushed, not pulled). For the
three-placement mix, each placement alone, and ``email`` for ``bench.batch_load``'s
customers (a cart left 30 h ago, opted in), the best of ``--passes`` passes over 3,000
requests (request conversion, ``Arbiter.decide``, the response serialized), each case in
its own process pinned to one core where ``taskset`` exists. Given source trees (default:
this checkout; ``git worktree add /tmp/before <commit>`` makes another), rounds alternate
them and each case keeps its best round; the last column is the last tree over the first.

``--golden`` prints, per tree, a SHA-256 over 4,000 decisions made on a fixed clock and seed (a
fifth with ``explain``; impressions and clicks fed back and learnt every 1,000, so the
models, clusters and scores are trained): the serialized responses without their ids and
the stored records. A change that should not change decisions must not change it.
``--golden --bagging K`` does the same with every placement's model a bag of ``K``
(the contextual path: each member's predictions and the exact first-slot probability).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from bench.load import IN_PROCESS_POPULATION, ROOT, TIMED_PASSES, run_in_tree

CASES = (("mix", ""), ("homepage_banner", "homepage_banner"), ("email", "email"),
         ("cart_page", "cart_page"), ("email, batch customers", "batch"))

TIMING = IN_PROCESS_POPULATION + r'''
import json, sys, time
from adapters.memory import MemoryStore
from pathlib import Path
from bench.load import DAY
from bench.loadgen import decide_requests
from dsl.loader import load_path
from engine.grpc import convert
from engine.grpc.decision_service import _decide_arguments
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.service import Arbiter

case, passes = sys.argv[1], int(sys.argv[2])
arb = Arbiter(load_path(Path("rulesets/retail")), MemoryStore(), seed=1)
now = time.time()
if case == "batch":  # bench.batch_load's customers
    for i in range(5000):
        arb.track(user_id=f"b{i}", event_type="add_to_cart", at=now - 30 * 3600,
                  properties={"value": 80.0}, traits={"first_name": "Ann",
                                                      "email_opt_in": True})
    requests = [pb.DecideRequest(user_id=f"b{i}", placement="email", channel="email")
                for i in range(3000)]
else:  # bench.load.seed_profiles' population
    seed_population(_track_in_process, 5000)
    make = decide_requests(5000, 7, case)
    requests = [make() for _ in range(3000)]
arb.learn()
arb.decide_without_store_reads()  # as served: arm counters pushed, not read per decision

''' + TIMED_PASSES

GOLDEN = r'''
import hashlib, msgspec
from pathlib import Path
from adapters.memory import MemoryStore
from bench.load import DAY
from bench.loadgen import decide_requests
from dsl.loader import load_path
from engine.grpc import convert
from engine.grpc.decision_service import _decide_arguments
from engine.service import Arbiter

import os, sys
T = 1_780_000_000.0
clock = [T]
# a relative path: explanations name rule files as loaded, the same in any checkout (and,
# for a copy, in any temporary directory: argv[1] holds it as "rules")
if len(sys.argv) > 1:
    os.chdir(sys.argv[1])
rules = Path("rules" if len(sys.argv) > 1 else "rulesets/retail")
arb = Arbiter(load_path(rules), MemoryStore(), seed=1, clock=lambda: clock[0])
for i in range(3000):
    user, kind = f"user-{i}", i % 5
    if kind == 4:
        continue
    arb.track(user_id=user, event_type="visit", at=T - 40 * DAY)
    if kind == 0:
        arb.track(user_id=user, event_type="purchase", at=T - (3 + i % 100) * DAY,
                  properties={"value": 700.0 + i})
        for d in range(i % 7):
            arb.track(user_id=user, event_type="visit", at=T - (d + 0.5) * DAY)
        if i % 3 == 0:
            arb.track(user_id=user, event_type="page_view", at=T - 3600,
                      item_id=f"sku-{i % 40}")
    elif kind == 1:
        arb.track(user_id=user, event_type="add_to_cart", at=T - (30 + i % 50) * 3600,
                  properties={"value": 80.0})
    elif kind == 2:
        for m in range(i % 6):
            arb.track(user_id=user, event_type="content_view", at=T - m * 60)
    if i % 3 != 2:
        arb.track(user_id=user, event_type="visit", at=T - 50 * DAY, traits={
            "email_opt_in": i % 3 == 0, "first_name": f"N{i}",
            "tier": "gold" if i % 13 == 0 else "standard",
            "consents": ["email_marketing"] if i % 4 == 0 else []})
arb.learn()
digest = hashlib.sha256()
save = arb.store.save_decision

def hashed_save(record, *args, **kwargs):
    # the record's fields, whatever its stored layout (a map before session 13, an array since)
    digest.update(repr(msgspec.structs.replace(record, decision_id="")).encode())
    return save(record, *args, **kwargs)

arb.store.save_decision = hashed_save
make = decide_requests(3000, 11)
for i in range(4000):
    request = make()
    request.explain = i % 5 == 0
    decision = arb.decide(**_decide_arguments(request))
    response = convert.decide_response(decision)
    response.decision_id = ""
    digest.update(response.SerializeToString(deterministic=True))
    if decision.actions and i % 3 == 0:
        top = decision.actions[0].action_id
        arb.feedback(decision_id=decision.decision_id, action_id=top, outcome="impression")
        if i % 6 == 0:
            arb.feedback(decision_id=decision.decision_id, action_id=top, outcome="click")
    if i % 1000 == 999:
        arb.learn()
    clock[0] += 0.5
print(digest.hexdigest())
'''


def _bagged_rules(tmp: Path, members: int) -> Path:
    """A copy of the retail example in ``tmp``/rules with every placement's model a bag."""
    rules = tmp / "rules"
    shutil.copytree(ROOT / "rulesets/retail", rules)
    placements = re.findall(r"^placement\s+(\w+)", "\n".join(
        f.read_text() for f in sorted(rules.glob("*.arb"))), flags=re.M)
    (rules / "zz_bagging.arb").write_text("".join(
        f"model on {p} {{ bagging: {members} }}\n" for p in placements))
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", type=Path, nargs="*", default=[ROOT])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--golden", action="store_true",
                        help="print each tree's fingerprint of 4,000 decisions instead")
    parser.add_argument("--bagging", type=int, default=0,
                        help="with --golden: every placement's model a bag of this many")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    if args.golden:
        with tempfile.TemporaryDirectory() as tmp:
            if args.bagging:
                _bagged_rules(Path(tmp), args.bagging)
            for tree in trees:
                fingerprint = run_in_tree(tree, GOLDEN, *([tmp] if args.bagging else []),
                                          core=1)
                print(f"{tree}: {fingerprint}")
        return
    best: dict[tuple[Path, str], float] = {}
    for _ in range(args.rounds):
        for tree in trees:
            for name, case in CASES:
                us = float(json.loads(run_in_tree(tree, TIMING, case, str(args.passes),
                                                  core=1)))
                best[tree, name] = min(us, best.get((tree, name), float("inf")))
    ratio = len(trees) > 1
    print("| case | " + " | ".join(f"{tree} µs" for tree in trees)
          + (" | last / first |" if ratio else " |"))
    print("|---|" + "---:|" * (len(trees) + ratio))
    for name, _ in CASES:
        row = [best[tree, name] for tree in trees]
        print(f"| {name} | " + " | ".join(f"{us:.1f}" for us in row)
              + (f" | {row[-1] / row[0]:.2f} |" if ratio else " |"))


if __name__ == "__main__":
    main()
