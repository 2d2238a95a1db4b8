"""Send-time optimisation: engagement when each customer gets email at their best hour,
against one fixed hour for everyone.

    python -m bench.send_time_quality [--customers 3000] [--history 6] [--seed 1]

Each simulated customer has a preferred hour of the week (a day and an hour, drawn from a
population that leans toward weekday evenings) and opens mail sent within an hour of it
with probability 0.30, two or three hours off 0.12, otherwise 0.03. Their history is
``--history`` past engagements (TrackEvents) at times drawn around their preferred hour
(half of them exactly in it, the rest anywhere in the week: noise). An in-process Arbiter
then decides an email for each; the decision's ``best_send_at`` is when to send. Compared:
the share of sends that land in the customer's preferred hour and the expected open rate,
for Arbiter's per-customer hour and for the single best fixed hour of the week for the
whole population (what one campaign time would achieve, chosen with hindsight).
"""

from __future__ import annotations

import argparse
import random

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.decide.send_time import HOURS_PER_WEEK, hour_of_week
from engine.service import Arbiter

RULES = """
events: open
placement mail { channels: email }
action news { placements: mail  value: 1  content { subject: "News" } }
"""
NOW = 1_780_000_000.0 - 1_780_000_000.0 % (7 * 86400)  # a week boundary in UTC


def open_probability(sent: int, preferred: int) -> float:
    distance = min((sent - preferred) % HOURS_PER_WEEK, (preferred - sent) % HOURS_PER_WEEK)
    return 0.30 if distance <= 1 else 0.12 if distance <= 3 else 0.03


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=3000)
    p.add_argument("--history", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    arb = Arbiter(load_text(RULES), MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    preferred: dict[str, int] = {}
    for c in range(args.customers):
        day = rng.choices(range(7), weights=[3, 3, 3, 3, 2, 1, 1])[0]
        hour = int(min(23, max(0, rng.gauss(19, 3))))
        slot = (day * 24 + hour) % HOURS_PER_WEEK  # counted from NOW's weekday
        preferred[f"c{c}"] = hour_of_week(NOW + slot * 3600)  # Arbiter's frame: Monday 0h
        for _ in range(args.history):
            at_slot = slot if rng.random() < 0.5 else rng.randrange(HOURS_PER_WEEK)
            weeks_ago = rng.randint(1, 8)
            at = NOW - weeks_ago * 7 * 86400 + at_slot * 3600 + rng.uniform(0, 3500)
            arb.track(user_id=f"c{c}", event_type="open", at=at)
    arb.sync()  # the population's hours, as replicas share them
    own_hits = own_opens = 0.0
    for user, slot in preferred.items():
        d = arb.decide(user_id=user, placement="mail", channel="email")
        assert d.best_send_at is not None
        sent = hour_of_week(d.best_send_at)
        own_hits += sent == slot
        own_opens += open_probability(sent, slot)
    best_fixed = max(range(HOURS_PER_WEEK), key=lambda h: sum(
        open_probability(h, s) for s in preferred.values()))
    fixed_hits = sum(best_fixed == s for s in preferred.values())
    fixed_opens = sum(open_probability(best_fixed, s) for s in preferred.values())
    n = len(preferred)
    print(f"{n:,} customers, {args.history} past engagements each (half in their hour)")
    print("| send time | sends in the customer's preferred hour | expected open rate |")
    print("|---|---:|---:|")
    print(f"| Arbiter `best_send_at`, per customer | {own_hits / n:.1%} | "
          f"{own_opens / n:.3f} |")
    print(f"| one fixed hour for everyone (the best, in hindsight: hour {best_fixed} of the "
          f"week) | {fixed_hits / n:.1%} | {fixed_opens / n:.3f} |")


if __name__ == "__main__":
    main()
