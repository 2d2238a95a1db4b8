"""Predictive scores: progressive AUC of a churn score against an offline logistic
regression on the same data.

    python -m bench.score_quality [--customers 2000] [--days 240] [--seed 1]

A simulated population over ``--days`` days: loyal customers buy every few days, casual
ones rarely, and some customers of each kind stop buying at a random day (their visits
thin out first). Events are tracked in time order through an in-process Arbiter whose
ruleset has ``score churn { label: no purchase within 60d, features: recency, orders in
90 days, visits in 30 days, visits in 7 days }``. The score learns online with delayed
labels; every resolved example is predicted before it is learnt (progressive
validation). The peer: logistic regression fitted offline (Newton's method, standardised
features) on the very examples the online learner resolved, scored two ways: trained on
the first half and tested on the second (a fair peer), and trained and tested on all of
it (an optimistic ceiling). AUC by the Mann-Whitney statistic.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from scipy.stats import rankdata

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.learning import scores as scores_module
from engine.service import Arbiter

RULES = """
events: purchase, visit
score churn {
  label: no purchase within 60d
  features: recency = coalesce(days_since(last(purchase)), 365),
            orders = count(purchase, within=90d),
            visits = count(visit, within=30d), recent_visits = count(visit, within=7d)
}
placement p { channels: email }
action a { placements: p  value: 1  when: score.churn > 0.5 }
"""
NOW = 1_780_000_000.0


def auc(labels: np.ndarray, predicted: np.ndarray) -> float:
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(predicted)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Newton's method (IRLS) with a small ridge; x already has its intercept column."""
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def design(rows: list[dict[str, float]], names: list[str], mean: np.ndarray | None = None,
           std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = np.array([[r.get(n, 0.0) for n in names] for r in rows])
    mean = raw.mean(axis=0) if mean is None else mean
    std = np.where(raw.std(axis=0) > 0, raw.std(axis=0), 1.0) if std is None else std
    return np.hstack([np.ones((len(raw), 1)), (raw - mean) / std]), mean, std


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--days", type=int, default=240)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    seen: list[tuple[dict[str, float], float, float]] = []  # (features, label, online p)
    original = scores_module._Score.resolve

    def recording(self: scores_module._Score, spec: object, snapshot: object,
                  label: float) -> None:
        x = snapshot.features  # type: ignore[attr-defined]
        p = self.predict(spec, x) if self.labels else 0.5  # type: ignore[arg-type]
        seen.append((dict(x), label, p))
        original(self, spec, snapshot, label)  # type: ignore[arg-type]

    scores_module._Score.resolve = recording  # type: ignore[method-assign,assignment]
    arb = Arbiter(load_text(RULES), MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    events = []
    for c in range(args.customers):
        loyal = rng.random() < 0.4
        stop = rng.uniform(0, args.days * 1.5)  # some never stop within the period
        for day in range(args.days):
            fading = day > stop - 20
            gone = day > stop
            rate = 0.0 if gone else (5.0 if loyal else 1.0)
            visits = (10.0 if loyal else 4.0) * (0.3 if fading else 1.0)
            at = NOW - (args.days - day) * 86400 + rng.uniform(0, 80000)
            if rng.random() < visits / 30:
                events.append((at, f"c{c}", "visit", 0.0))
            if rng.random() < rate / 30:
                events.append((at + 60, f"c{c}", "purchase", rng.uniform(20, 120)))
    events.sort()
    started = time.perf_counter()
    for at, user, event, value in events:
        arb.track(user_id=user, event_type=event, at=at,
                  properties={"value": value} if value else {})
    arb.learn()
    seconds = time.perf_counter() - started
    scores_module._Score.resolve = original  # type: ignore[method-assign]
    names = list(arb.ruleset.scores["churn"].features)
    rows = [x for x, _, _ in seen]
    y = np.array([label for _, label, _ in seen])
    online = np.array([p for _, _, p in seen])
    half = len(seen) // 2
    x_all, _, _ = design(rows, names)
    ceiling = auc(y, x_all @ fit_logistic(x_all, y))
    x_train, mean, std = design(rows[:half], names)
    x_test, _, _ = design(rows[half:], names, mean, std)
    fair = auc(y[half:], x_test @ fit_logistic(x_train, y[:half]))
    report = next(q for q in arb.model_report() if q.model == "score:churn")
    print(f"{args.customers:,} customers, {args.days} days, {len(events):,} events "
          f"({seconds:.1f} s), {len(seen):,} labels resolved, churn rate {y.mean():.3f}")
    print("| churn score | AUC, second half of the labels | AUC, all labels |")
    print("|---|---:|---:|")
    print(f"| Arbiter, online (progressive: each predicted before learnt) | "
          f"{auc(y[half:], online[half:]):.3f} | {auc(y, online):.3f} |")
    print(f"| offline logistic regression, trained on the first half | {fair:.3f} | |")
    print(f"| offline logistic regression, trained and tested on all | | {ceiling:.3f} |")
    print(f"(the model report's rolling AUC over the last 1,000 labels: "
          f"{report.rolling_auc:.3f}; mean predicted {report.mean_predicted:.3f} vs "
          f"observed {report.observed_rate:.3f})")


if __name__ == "__main__":
    main()
