"""What a Decide costs for a customer whose profile is at its bounds, against a new one.

    python -m bench.heavy_profile [--events 1000] [--contacts 200] [--decisions 300]

The retail example on the in-memory store: a customer with one visit, and a "heavy" one
with ``--events`` events of each of the five event types (at most
``engine.profiles.MAX_RECENT_EVENTS`` recent ones are kept per type; item views and
purchases with items) and ``--contacts`` contacts with each action (impressions, a click
in ten, on the action's first channel; at most ``engine.profiles.MAX_CONTACTS_PER_ACTION``
are kept per action), learnt. Prints µs per Decide for each placement and each
customer, the heavy profile's stored size, and what decoding it costs alone: every
Decide decodes the customer's stored profile (the in-memory store and Redis's
in-process cache hold bytes).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import msgspec

from adapters.memory import MemoryStore
from dsl.loader import load_path
from engine.profiles import record_contact
from engine.service import Arbiter

PLACEMENTS = (("homepage_banner", "web"), ("email", "email"), ("cart_page", "web"))
EVENTS = ("visit", "page_view", "add_to_cart", "purchase", "content_view")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--contacts", type=int, default=0)
    p.add_argument("--decisions", type=int, default=300)
    args = p.parse_args()
    arb = Arbiter(load_path(Path(__file__).parent.parent / "rulesets/retail"), MemoryStore(),
                  seed=1)
    now = time.time()
    for event in EVENTS:
        for k in range(args.events):
            arb.track(user_id="heavy", event_type=event, at=now - k * 60,
                      properties={"value": 5.0} if event in ("purchase", "add_to_cart")
                      else None,
                      item_id=f"sku-{k % 29:03d}" if event == "page_view" else "")
    for action in arb.ruleset.actions.values():
        channel = sorted(action.channels or ("web",))[0]
        for k in range(args.contacts):
            outcome = "click" if k % 10 == 9 else "impression"
            at = now - 86400.0 - k * 3600.0  # (a day ago and before: caps mostly pass)
            arb.store.update_profile("heavy", functools.partial(
                record_contact, user_id="heavy", action_id=action.id, outcome=outcome, at=at,
                channel=channel))
    arb.track(user_id="light", event_type="visit", at=now)
    arb.learn()

    def per_decision(user: str, placement: str, channel: str) -> float:
        started = time.perf_counter()
        for _ in range(args.decisions):
            arb.decide(user_id=user, placement=placement, channel=channel)
        return (time.perf_counter() - started) / args.decisions * 1e6

    print("| placement | new customer µs | heavy customer µs |")
    print("|---|---:|---:|")
    for placement, channel in PLACEMENTS:
        print(f"| {placement} | {per_decision('light', placement, channel):.0f} | "
              f"{per_decision('heavy', placement, channel):.0f} |")
    profile = arb.store.get_profile("heavy")
    started = time.perf_counter()
    for _ in range(100):
        arb.store.get_profile("heavy")
    decode = (time.perf_counter() - started) / 100 * 1e6
    action_id = next(iter(arb.ruleset.actions))
    started = time.perf_counter()
    for k in range(100):  # (as Feedback does: read, change, write back)
        arb.store.update_profile("heavy", functools.partial(
            record_contact, user_id="heavy", action_id=action_id, outcome="impression",
            at=now + k, channel="web"))
    contact = (time.perf_counter() - started) / 100 * 1e6
    print(f"heavy profile: {len(msgspec.msgpack.encode(profile)):,} bytes stored, "
          f"read and decoded in {decode:.0f} µs, a contact recorded in {contact:.0f} µs")


if __name__ == "__main__":
    main()
