"""A simulated population for the retail example: true click rates differ by arm and segment.

    python -m bench.simulate --target 127.0.0.1:50051 --users 600 --decisions 4000

Every call goes over gRPC to a running server, as a real backend's would:
TrackEvent builds each customer's history (so the ruleset puts them in segments),
then each step asks Decide for the homepage banner, reports the impression and,
with the customer's true click rate for the action shown, a click.

Two kinds of customers (half each):

* ``loyal``: bought 600 three days ago, visits daily: high_value_loyal and
  frequent_visitor, so every arm of ``hero_test`` is eligible.
* ``browser``: visits often, has not bought: frequent_visitor, so new_arrivals
  and free_shipping are eligible.

The true rates (:data:`CLICK_RATES`) make ``vip_early_access`` the best arm for
loyal customers and ``new_arrivals`` for browsers. At the end the script prints
what the policy earned against always showing the best and a uniform choice.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

CLICK_RATES = {
    "loyal": {"vip_early_access": 0.14, "new_arrivals": 0.06, "free_shipping": 0.04},
    "browser": {"new_arrivals": 0.09, "free_shipping": 0.03},
}
DEFAULT_RATE = 0.02  # anything else shown (bestsellers, onboarding)
DAY = 86400.0


def _ts(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


def kind_of(user: str) -> str:
    return "loyal" if int(user.rsplit("-", 1)[1]) % 2 == 0 else "browser"


def build_profile(stub: pb_grpc.DecisionServiceStub, user: str, now: float) -> None:
    """The events that put ``user`` in its segments."""
    events: list[tuple[str, float, float | None]] = [("visit", now - 20 * DAY, None)]
    events += [("visit", now - d * DAY - 600, None) for d in range(6)]
    if kind_of(user) == "loyal":
        events.append(("purchase", now - 3 * DAY, 600.0))
    for event_type, at, value in events:
        properties = {"value": pb.Value(number_value=value)} if value is not None else {}
        stub.TrackEvent(pb.TrackEventRequest(user_id=user, event_type=event_type,
                                             properties=properties, timestamp=_ts(at)),
                        timeout=10)


def step(stub: pb_grpc.DecisionServiceStub, user: str, rng: random.Random) -> tuple[str, int]:
    """One decision and its feedback; returns (action shown, clicked)."""
    response = stub.Decide(pb.DecideRequest(user_id=user, placement="homepage_banner",
                                            channel="web"), timeout=10)
    if not response.actions:
        return "", 0
    action = response.actions[0].action_id
    stub.Feedback(pb.FeedbackRequest(decision_id=response.decision_id, action_id=action,
                                     outcome=pb.OUTCOME_IMPRESSION), timeout=10)
    clicked = rng.random() < CLICK_RATES[kind_of(user)].get(action, DEFAULT_RATE)
    if clicked:
        stub.Feedback(pb.FeedbackRequest(decision_id=response.decision_id, action_id=action,
                                         outcome=pb.OUTCOME_CLICK), timeout=10)
    return action, int(clicked)


def simulate(target: str, users: int, decisions: int, seed: int = 7,
             concurrency: int = 4) -> dict[str, object]:
    rng = random.Random(seed)
    names = [f"sim-{seed}-{i}" for i in range(users)]
    now = time.time()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda u: build_profile(stub, u, now), names))
            picks = [rng.choice(names) for _ in range(decisions)]
            seeds = [rng.random() for _ in range(decisions)]
            results = list(pool.map(
                lambda i: (picks[i], *step(stub, picks[i], random.Random(seeds[i]))),
                range(decisions)))
    shown: Counter[str] = Counter()
    clicks = 0
    for user, action, clicked in results:
        shown[f"{kind_of(user)}:{action}"] += 1
        clicks += clicked
    best = sum(max(CLICK_RATES[kind_of(u)].values()) for u in picks) / decisions
    uniform = sum(sum(CLICK_RATES[kind_of(u)].values()) / len(CLICK_RATES[kind_of(u)])
                  for u in picks) / decisions
    return {"decisions": decisions, "click_rate": clicks / decisions,
            "best_possible": round(best, 4), "uniform": round(uniform, 4),
            "shown": dict(sorted(shown.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--decisions", type=int, default=4000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    print(json.dumps(simulate(args.target, args.users, args.decisions, args.seed,
                              args.concurrency), indent=2))


if __name__ == "__main__":
    main()
