"""The in-memory store's decision writes while records expire, at two numbers of live records.

    python -m bench.memory_expiry [--sizes 20000,200000] [--writes 50000]

For each size, the store is filled with that many decision records (each kept for as many
seconds as there are records, one written per second of a simulated clock), then
``--writes`` more are written, one per second, so one record expires per write: the
steady state of a server at a constant rate. Prints the mean and the longest single
``save_decision`` in µs: the claim is that neither grows with the number of live
records (expiry takes what falls due, it never scans them all).
"""

from __future__ import annotations

import argparse
import time

from adapters.memory import MemoryStore
from engine.records import DecisionRecord, ShownAction

START = 1_780_000_000.0


def _record(n: int) -> DecisionRecord:
    return DecisionRecord(f"d{n}", f"u{n % 5000}", "home", "web", "rev", START + n,
                          [ShownAction("offer", 1, 0.5, 0.1, 5.0)], features={"x": 1.0})


def measure(live: int, writes: int) -> tuple[float, float]:
    """(mean, longest) µs of one save_decision in the steady state with ``live`` records."""
    clock = [START]
    store = MemoryStore(clock=lambda: clock[0])
    for n in range(live):
        clock[0] = START + n
        store.save_decision(_record(n), float(live))
    longest, total = 0.0, 0.0
    for n in range(live, live + writes):
        clock[0] = START + n
        record = _record(n)
        started = time.perf_counter()
        store.save_decision(record, float(live))
        spent = time.perf_counter() - started
        total += spent
        longest = max(longest, spent)
    return total / writes * 1e6, longest * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--writes", type=int, default=50000)
    args = parser.parse_args()
    print("| live records | mean µs per write | longest write µs |")
    print("|---:|---:|---:|")
    for live in (int(s) for s in args.sizes.split(",")):
        mean, longest = measure(live, args.writes)
        print(f"| {live:,} | {mean:.1f} | {longest:,.0f} |")


if __name__ == "__main__":
    main()
