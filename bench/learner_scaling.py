"""The learning-log consumer's cost per event as impressions awaiting a reward pile up.

    python -m bench.learner_scaling [--pending 1000,10000,100000]
    PYTHONPATH=/tmp/before python bench/learner_scaling.py   # an older checkout

In process, no server: a Learner on a memory store is given N impressions that await
their reward (recent, so none expires), then applies 1,000 more learning events
(impressions); the time per event is the consumer's own cost. The script runs
against the learner of whichever tree is on the path (the one before issue 9 kept
them in ``pending`` and copied it at every event; the one after keeps them, for the
quality metrics only, in ``labels``).
"""

from __future__ import annotations

import argparse
import time

from adapters.memory import MemoryStore
from dsl.ruleset import DEFAULT_MODEL

try:
    from engine.learning.consumer import Learner
    from engine.learning.models import PropensityModels
except ImportError:  # a checkout from before the layered engine (issue 8)
    from engine.propensity import PropensityModels  # type: ignore[no-redef]

    from engine.learning import Learner  # type: ignore[no-redef,attr-defined]
from engine.records import DecisionRecord, LearningEvent, ShownAction

NOW = 1_767_614_400.0


def per_event_us(pending: int, events: int = 1000) -> float:
    store = MemoryStore(clock=lambda: NOW)
    learner = Learner(store, PropensityModels(), lambda _p, _a: (DEFAULT_MODEL, 0.05),
                      reward_wait=1e9, snapshot_every=10**9)
    if hasattr(learner, "pending"):  # before: features, shown at, placement per impression
        learner.pending.update({(f"w{i}", "a"): ({"x": 1.0}, NOW, "p") for i in range(pending)})
    else:
        for i in range(pending):
            learner.labels.shown((f"w{i}", "a"), "a", 0.05, NOW)
    for i in range(events):
        d = DecisionRecord(f"d{i}", "u", "p", "web", "r", NOW, [ShownAction("a", 1, 1, 0.1, 1)])
        store.save_decision(d, 1e6)
        event = LearningEvent(f"d{i}", "a", "impression", NOW, NOW + i, {"x": 1.0},
                              placement="p")
        if "shown" in LearningEvent.__struct_fields__:
            event = LearningEvent(f"d{i}", "a", "impression", NOW, NOW + i, {"x": 1.0},
                                  placement="p", shown=True)

        def change(dd: DecisionRecord, p: object, event: LearningEvent = event) -> object:
            from engine.ports import FeedbackEffects
            return FeedbackEffects(dd, None, event, {})

        store.commit_feedback(f"d{i}", f"k{i}", change, 1e6)  # type: ignore[arg-type]
    started = time.perf_counter()
    learner.catch_up()
    return (time.perf_counter() - started) / events * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pending", default="1000,10000,100000")
    args = p.parse_args()
    print("| impressions awaiting a reward | µs per learning event |")
    print("|---:|---:|")
    for n in (int(x) for x in args.pending.split(",")):
        best = min(per_event_us(n) for _ in range(3))
        print(f"| {n:,} | {best:.1f} |", flush=True)


if __name__ == "__main__":
    main()
