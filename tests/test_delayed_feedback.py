"""Delayed labels do not bias the propensity models (docs/learning.md, "Delayed feedback").

A simulated stream on a simulated clock: one impression every 2 s, a true click rate
of 10%, clicks arriving 0-10 minutes after their impression, a 30-minute reward wait.
Learning positives at once and negatives only after the wait shows the models nothing
but clicks for the first half hour (their mean prediction climbs towards 1); with fake
negatives, importance-weighted, the mean prediction stays near the true rate.
"""

from __future__ import annotations

import heapq
import random

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.service import Arbiter

RULES = """
placement home { channels: web }
action offer { placements: home  value: 1 }
"""
TRUE_RATE = 0.10
REWARD_WAIT = 1800.0
STEP = 2.0
WARM_UP = 600  # impressions (20 simulated minutes: less than one reward wait)
WINDOW = 500  # impressions the mean prediction is taken over (about 50 clicks)
TOLERANCE = 0.05  # the SGD noise of a 0.05 learning rate; the old labelling reached 0.75


def test_mean_prediction_stays_near_the_true_rate_under_delayed_clicks() -> None:
    now = [1_767_614_400.0]
    arb = Arbiter(load_text(RULES), MemoryStore(clock=lambda: now[0]), seed=1,
                  clock=lambda: now[0], reward_wait=REWARD_WAIT)
    rng = random.Random(7)
    clicks: list[tuple[float, str]] = []
    predictions: list[float] = []
    worst = 0.0
    for i in range(3000):  # 100 simulated minutes: more than three reward waits
        now[0] += STEP
        while clicks and clicks[0][0] <= now[0]:
            _, decision_id = heapq.heappop(clicks)
            arb.feedback(decision_id=decision_id, action_id="offer", outcome="click")
        d = arb.decide(user_id=f"u{i}", placement="home")
        predictions.append(d.actions[0].propensity)
        arb.feedback(decision_id=d.decision_id, action_id="offer", outcome="impression")
        if rng.random() < TRUE_RATE:
            heapq.heappush(clicks, (now[0] + rng.uniform(0, 600), d.decision_id))
        if i % 10 == 0:
            arb.learn()  # the server's background learner
        if i >= WARM_UP:
            mean = sum(predictions[-WINDOW:]) / WINDOW
            worst = max(worst, abs(mean - TRUE_RATE))
    assert worst < TOLERANCE, f"mean prediction strayed {worst:.3f} from {TRUE_RATE}"
    (quality,) = arb.model_report()  # scored against final labels only
    assert abs(quality.observed_rate - TRUE_RATE) < 0.03
    assert abs(quality.mean_predicted - TRUE_RATE) < TOLERANCE
    assert quality.rolling_auc == quality.rolling_auc  # defined: both labels were seen
