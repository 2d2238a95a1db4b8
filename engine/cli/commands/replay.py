"""``arbiter replay``: off-policy estimate of a candidate ruleset's reward on a decision log."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from engine.cli.common import add_format_argument, load_ruleset, memory_store_factory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="estimate a candidate ruleset's reward from logs")
    p.add_argument("log", nargs="+",
                   help="decision log(s) (arbiter serve --decision-log; with --processes "
                        "N, every FILE.i.jsonl: read merged in time order)")
    p.add_argument("--rules", required=True, help="the candidate ruleset directory")
    p.add_argument("--reward", default="click",
                   help="reward outcome: click, conversion, or conversion.value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--placement", help="only the decisions of this placement")
    p.add_argument("--experiment", help="only the decisions that showed this experiment")
    add_format_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapters.decision_log import iter_logs
    from engine.cli.replay import replay

    candidate = load_ruleset(args.rules, "replay")
    if candidate is None:
        return 1
    for path in args.log:
        if not Path(path).is_file():
            print(f"arbiter replay: no decision log at {path}", file=sys.stderr)
            return 2
    reward, _, value = args.reward.partition(".")
    result = replay(lambda: iter_logs(args.log), candidate, memory_store_factory(),
                    reward=reward, value=value == "value", seed=args.seed,
                    placement=args.placement, experiment=args.experiment,
                    progress=lambda n: print(f"replayed {n:,} decisions", file=sys.stderr,
                                             flush=True))
    if args.format == "json":
        print(json.dumps(asdict(result), indent=2))
    else:
        print(result.render())
    return 0 if result.decisions else 1
