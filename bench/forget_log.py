"""ForgetProfile with a decision log of a million decisions, served, and Decide meanwhile.

    python -m bench.forget_log [--decisions 1000000] [--settle S] [--server-tree DIR]

Writes a decision log of ``--decisions`` decisions (about 590 bytes each, an outcome
line for every third; customers drawn from 100,000), serves the retail example on the
in-memory store with ``--decision-log`` on it, and, while one client decides in a
closed loop, asks ForgetProfile for four customers in turn (10 s deadline, the server's
default), ``--settle`` seconds after it started. Prints each ForgetProfile's status
and time, and the Decides answered while they ran (count, median, slowest).
``--server-tree`` serves another checkout (a "before"); erasing a user in process, by id
and by pseudonym (as other processes do): ``python -m bench.forget_log --in-process``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.load import ROOT, arbiter_server, deciding
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc


def write_log(path: Path, decisions: int) -> None:
    """A decision log as the server writes it: decisions, and an outcome for every third."""
    rng = random.Random(1)
    with path.open("w") as f:
        for i in range(decisions):
            decision = {
                "kind": "decision", "decision_id": f"{i:024x}", "at": 1.79e9 + i,
                "user_id": f"user-{rng.randrange(100_000)}", "placement": "homepage_banner",
                "channel": "web", "revision": "ecab5d1c5852",
                "context": {"device": "mobile", "page": "home"},
                "profile": {"tier": "gold", "email_opt_in": True, "first_name": "<pii>",
                            "events": {"visit": 3, "purchase": 1}},
                "holdout": None,
                "actions": [{"action_id": "new_arrivals", "rank": 1, "score": 0.9,
                             "propensity": 0.06, "probability": 0.41,
                             "experiment": "hero_test", "arm": "new_arrivals"},
                            {"action_id": "loyalty", "rank": 2, "score": 0.5,
                             "propensity": 0.03}]}
            f.write(json.dumps(decision, separators=(",", ":")) + "\n")
            if i % 3 == 0:  # (with its user, as the server writes them since session 18)
                f.write(json.dumps({"kind": "outcome", "decision_id": f"{i:024x}",
                                    "user_id": decision["user_id"],
                                    "action_id": "new_arrivals", "outcome": "impression",
                                    "value": None, "at": 1.79e9 + i + 1},
                                   separators=(",", ":")) + "\n")


def served(tree: Path, log: Path, settle: float) -> None:
    extra = ("--processes", "1", "--decision-log", str(log))
    with arbiter_server(None, 4, tree=tree, extra=extra) as (target, _), \
            grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        time.sleep(settle)
        with deciding(channel) as latencies:
            time.sleep(1)
            before = len(latencies)
            for user in ("user-42", "user-43", "user-44", "user-45"):
                started = time.perf_counter()
                try:
                    stub.ForgetProfile(pb.ForgetProfileRequest(user_id=user), timeout=10)
                    status = "OK"
                except grpc.RpcError as err:
                    status = err.code().name
                print(f"ForgetProfile {user}: {status} in "
                      f"{time.perf_counter() - started:.2f} s", flush=True)
            during = latencies[before:]
    print(f"Decide meanwhile: {len(during)} answered, median "
          f"{statistics.median(during) * 1e3:.2f} ms, slowest {max(during) * 1e3:.1f} ms")


def in_process(log: Path) -> None:
    """Erasing by id (the answering process), then by pseudonym (every other process:
    each line's user id hashed, so no line is passed over by the regex engine alone)."""
    from adapters.decision_log import erase_users
    from engine.records import pseudonym

    for users in (["user-42"], [f"user-{i}" for i in range(40, 140)]):
        for by in ("id", "pseudonym"):
            work = log.with_suffix(".work")
            shutil.copy(log, work)
            started = time.perf_counter()
            erased = (erase_users(work, users) if by == "id" else
                      erase_users(work, (), {pseudonym(user) for user in users}))
            print(f"erase_users by {by}, {len(users)} user(s): {erased} lines in "
                  f"{time.perf_counter() - started:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=1_000_000)
    p.add_argument("--server-tree", type=Path, default=ROOT)
    p.add_argument("--in-process", action="store_true")
    p.add_argument("--settle", type=float, default=0.0,
                   help="seconds the server runs before the forgets (it indexes the log "
                        "it found at start meanwhile: about 40 s for a million decisions)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "decisions.jsonl"
        write_log(log, args.decisions)
        if args.in_process:
            in_process(log)
        else:
            served(args.server_tree, log, args.settle)


if __name__ == "__main__":
    main()
