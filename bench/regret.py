"""Cumulative regret on simulated arms: Arbiter's Thompson sampling vs MABWiser.

    python -m bench.regret [--steps 3000] [--seeds 10]

Arbiter's policy is the serving code path: the experiment's statistics become an
:class:`engine.experiments.state.ExperimentState` (posterior draws) whenever they change,
and each decision picks a row, exactly as ``Decide`` does. Rewards arrive after
``delay`` decisions, in batches (delayed feedback). MABWiser's Thompson sampling
and its epsilon-greedy (epsilon 0.1) see the same rewards, with the same delay,
on the same seeds: each policy draws its own decisions, and the reward of arm
``a`` at step ``t`` is a pre-drawn ``U[t, a] < p_a``, the same for every policy.

Regret is the expected regret ``sum_t (p* - p_{a_t})``. Prints a Markdown table
(mean and standard error over seeds) for bench/RESULTS.md.

Value rewards (``reward: conversion.value``): a customer buys with the arm's rate
and pays the arm's price, so an arm's mean reward is rate x price. Arbiter runs with
its default (the pooled prior) and with the fixed ``normal_gamma(0, 1, 1, 1)`` that
was the default before; MABWiser's Thompson sampling is Beta-Bernoulli only, so the
reference there is its epsilon-greedy, which needs no prior.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from mabwiser.mab import MAB, LearningPolicy

from dsl.ast import Pos
from dsl.ruleset import BetaPrior, Experiment, NormalGammaPrior, Prior
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.state import build_state
from engine.records import ArmCounts

SCENARIOS = [  # (name, arm rates, delay in decisions)
    ("2 arms, gap 0.05", [0.05, 0.10], 0),
    ("5 arms, gap 0.02", [0.03, 0.04, 0.05, 0.06, 0.08], 0),
    ("10 arms, gap 0.01", [0.02 + 0.005 * i for i in range(9)] + [0.07], 0),
    ("5 arms, delay 100", [0.03, 0.04, 0.05, 0.06, 0.08], 100),
    ("5 arms, delay 500", [0.03, 0.04, 0.05, 0.06, 0.08], 500),
]

VALUE_SCENARIOS = [  # (name, purchase rates, prices): mean reward rate x price
    ("revenue, 2 arms, 3 vs 6", [0.3, 0.3], [10.0, 20.0]),
    ("revenue, 3 arms, 100s", [0.05, 0.04, 0.05], [300.0, 500.0, 500.0]),
]

Policy = Callable[[], int]
Update = Callable[[list[int], list[float]], None]


UNIFORM = BetaPrior(1, 1)


def arbiter_policy(k: int, seed: int, prior: Prior = UNIFORM) -> tuple[Policy, Update]:
    arms = tuple(f"a{i}" for i in range(k))
    value = isinstance(prior, NormalGammaPrior)
    experiment = Experiment("bench", "p", arms, prior, "conversion" if value else "click",
                            Pos("bench", 1, 1), reward_value=value)
    sampler = ThompsonSampler(seed)
    counts = {a: ArmCounts() for a in arms}
    state = [build_state(experiment, counts, 0.0, sampler)]

    def choose() -> int:
        draws = state[0].draws
        return int(np.argmax(draws[int(sampler.integers(len(draws)))]))

    def update(decisions: list[int], rewards: list[float]) -> None:
        for d, r in zip(decisions, rewards, strict=True):
            counts[arms[d]].trials += 1
            counts[arms[d]].successes += r
            counts[arms[d]].sum_sq += r * r
        state[0] = build_state(experiment, counts, 0.0, sampler)

    return choose, update


def mabwiser_policy(k: int, seed: int, policy: object) -> tuple[Policy, Update]:
    mab = MAB(list(range(k)), policy, seed=seed)
    mab.fit(list(range(k)), [0.0] * k)  # MABWiser needs a fit before predict: one 0 each
    return (lambda: int(mab.predict())), (lambda d, r: mab.partial_fit(d, r))


def run(rates: list[float], delay: int, steps: int, seed: int,
        make: Callable[[int, int], tuple[Policy, Update]],
        prices: list[float] | None = None) -> float:
    rng = np.random.default_rng(1000 + seed)
    price = np.array(prices) if prices is not None else np.ones(len(rates))
    outcomes = (rng.random((steps, len(rates))) < np.array(rates)) * price
    choose, update = make(len(rates), seed)
    means = [r * p for r, p in zip(rates, price, strict=True)]
    best = max(means)
    regret = 0.0
    pending: list[tuple[int, int, float]] = []  # (due step, arm, reward)
    for t in range(steps):
        due = [p for p in pending if p[0] <= t]
        if due:
            pending = [p for p in pending if p[0] > t]
            update([a for _, a, _ in due], [r for _, _, r in due])
        arm = choose()
        regret += best - means[arm]
        reward = float(outcomes[t, arm])
        if delay == 0:
            update([arm], [reward])
        else:
            pending.append((t + delay, arm, reward))
    return regret


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    policies: dict[str, Callable[[int, int], tuple[Policy, Update]]] = {
        "Arbiter Thompson": arbiter_policy,
        "MABWiser Thompson": lambda k, s: mabwiser_policy(
            k, s, LearningPolicy.ThompsonSampling()),
        "MABWiser eps-greedy 0.1": lambda k, s: mabwiser_policy(
            k, s, LearningPolicy.EpsilonGreedy(epsilon=0.1)),
    }
    print(f"cumulative expected regret after {args.steps} decisions, "
          f"mean ± s.e. over {args.seeds} seeds\n")
    print("| scenario | " + " | ".join(policies) + " |")
    print("|---|" + "---:|" * len(policies))
    started = time.time()
    for name, rates, delay in SCENARIOS:
        cells = []
        for make in policies.values():
            values = np.array([run(rates, delay, args.steps, s, make)
                               for s in range(args.seeds)])
            cells.append(f"{values.mean():.1f} ± {values.std(ddof=1) / np.sqrt(len(values)):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    value_policies: dict[str, Callable[[int, int], tuple[Policy, Update]]] = {
        "Arbiter, pooled prior (default)": lambda k, s: arbiter_policy(
            k, s, NormalGammaPrior(0.0, 1.0, 1.0, 1.0, pooled=True)),
        "Arbiter, fixed normal_gamma(0,1,1,1)": lambda k, s: arbiter_policy(
            k, s, NormalGammaPrior(0.0, 1.0, 1.0, 1.0)),
        "MABWiser eps-greedy 0.1": lambda k, s: mabwiser_policy(
            k, s, LearningPolicy.EpsilonGreedy(epsilon=0.1)),
    }
    print("\n| value scenario | " + " | ".join(value_policies) + " |")
    print("|---|" + "---:|" * len(value_policies))
    for name, rates, prices in VALUE_SCENARIOS:
        cells = []
        for make in value_policies.values():
            values = np.array([run(rates, 0, args.steps, s, make, prices)
                               for s in range(args.seeds)])
            cells.append(f"{values.mean():.0f} ± {values.std(ddof=1) / np.sqrt(len(values)):.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
