"""In-process Decide, one source tree against another (before/after a change), interleaved.

    git worktree add /tmp/before <commit>
    python -m bench.decide_ab /tmp/before .

Each round runs every tree in its own process (``PYTHONPATH=tree``), pinned to one core
where ``taskset`` exists, timing ``Arbiter.decide`` on the retail ruleset for each
placement, with and without ``explain`` (min of 7 repeats of 500 calls after 200 warm-up
calls); rounds alternate the trees, and the report keeps each case's best round. The
minimum is the least noisy estimate on a shared machine; ratios are after / before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.load import run_in_tree

CASE = r'''
import json, timeit
from adapters.memory import MemoryStore
from dsl.loader import load_path
from engine.service import Arbiter
arb = Arbiter(load_path("rulesets/retail"), MemoryStore(), seed=1)
out = {}
for placement, channel in (("email", "email"), ("homepage_banner", "web"), ("cart_page", "web")):
    for explain in (False, True):
        f = lambda: arb.decide(user_id="v", placement=placement, channel=channel,
                               explain=explain)
        for _ in range(200):
            f()
        best = min(timeit.repeat(f, number=500, repeat=7)) / 500
        out[placement + (" explain" if explain else "")] = best * 1e6
for i in range(7):  # a loyal customer: every arm of the homepage experiment is eligible
    arb.track(user_id="vip", event_type="visit")
arb.track(user_id="vip", event_type="purchase", properties={"value": 700.0})
f = lambda: arb.decide(user_id="vip", placement="homepage_banner", channel="web")
for _ in range(200):
    f()
out["homepage_banner, VIP (Thompson)"] = min(timeit.repeat(f, number=500, repeat=7)) / 500 * 1e6
print(json.dumps(out))
'''


def run_tree(tree: Path) -> dict[str, float]:
    return dict(json.loads(run_in_tree(tree, CASE)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for _ in range(args.rounds):
        for name, tree in (("before", args.before), ("after", args.after)):
            for case, us in run_tree(tree.resolve()).items():
                best[name][case] = min(us, best[name].get(case, float("inf")))
    print(f"{'case':<26} {'before µs':>10} {'after µs':>10} {'ratio':>7}")
    for case, before in best["before"].items():
        after = best["after"][case]
        print(f"{case:<26} {before:>10.2f} {after:>10.2f} {after / before:>7.3f}")


if __name__ == "__main__":
    main()
