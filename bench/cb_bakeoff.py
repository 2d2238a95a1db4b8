"""Contextual-bandit bake-off: classification data as bandit feedback (Bietti et al., 2021).

    python -m bench.cb_bakeoff [--seeds 3]

Each class is an action; a policy sees the features, picks an action and learns
only that action's reward (1 for the right class, else 0). The score is the
average progressive reward over one pass in the data set's order. The data sets
ship inside the river package (no download).

Policies, on the same streams:

* Arbiter: the serving model layer (:class:`engine.learning.models.PropensityModels`),
  one River logistic regression per action, online-bagged (10 members), one member
  sampled per decision, cold-start spread around the prior 1/K (as ``Decide`` does
  with ``model on P { bagging: 10 }``); and the same with one model per placement
  (the action a feature crossed with every feature).
* Vowpal Wabbit ``--cb_explore_adf``: epsilon-greedy (0.05, its default) and
  bagging 10 (``--bag 10``), action-dependent features crossed with the context.
* Uniform random: the floor (1 / number of classes).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Iterator

import numpy as np
from river import datasets

from dsl.ruleset import ModelSpec
from engine.learning.models import PropensityModels

DATASETS: dict[str, Callable[[], datasets.base.Dataset]] = {
    "ImageSegments (7 classes)": datasets.ImageSegments,
    "Phishing (2)": datasets.Phishing,
    "Bananas (2)": datasets.Bananas,
}
Stream = list[tuple[dict[str, float], str]]


def load(make: Callable[[], datasets.base.Dataset]) -> tuple[Stream, list[str]]:
    rows: Stream = []
    for x, y in make():
        rows.append(({k: float(v) for k, v in x.items() if isinstance(v, int | float)}, str(y)))
    return rows, sorted({y for _, y in rows})


def arbiter_policy(per: str) -> Callable[[Stream, list[str], int], float]:
    def run(stream: Stream, actions: list[str], seed: int) -> float:
        spec = ModelSpec(per=per, bagging=10)
        models = PropensityModels()
        prior = 1.0 / len(actions)
        rng = np.random.default_rng(seed)
        total = 0.0
        for x, y in stream:
            member = int(rng.integers(spec.bagging))
            scores = [models.predict(a, spec, prior, x, "p", member) for a in actions]
            chosen = actions[int(np.argmax(scores))]
            reward = chosen == y
            models.learn(chosen, spec, prior, x, reward, "p")
            total += reward
        return total / len(stream)

    return run


def _vw_example(x: dict[str, float], actions: list[str]) -> list[str]:
    shared = "shared |s " + " ".join(f"{k.replace(' ', '_')}:{v:.6g}" for k, v in x.items()
                                     if math.isfinite(v))
    return [shared] + [f"|a a={a.replace(' ', '_')}" for a in actions]


def vw_policy(flags: str) -> Callable[[Stream, list[str], int], float]:
    def run(stream: Stream, actions: list[str], seed: int) -> float:
        from vowpalwabbit import pyvw

        vw = pyvw.Workspace(f"--cb_explore_adf {flags} -q sa --quiet --random_seed {seed}")
        rng = random.Random(seed)
        total = 0.0
        for x, y in stream:
            lines = _vw_example(x, actions)
            pmf = vw.predict(lines)
            index = rng.choices(range(len(actions)), weights=pmf)[0]
            reward = actions[index] == y
            lines[index + 1] = f"0:{-float(reward)}:{pmf[index]} {lines[index + 1]}"
            vw.learn(lines)
            total += reward
        vw.finish()
        return total / len(stream)

    return run


def uniform_policy(stream: Stream, actions: list[str], seed: int) -> float:
    rng = random.Random(seed)
    return sum(rng.choice(actions) == y for _, y in stream) / len(stream)


POLICIES: dict[str, Callable[[Stream, list[str], int], float]] = {
    "Arbiter, per action, bagged x10": arbiter_policy("action"),
    "Arbiter, per placement, bagged x10": arbiter_policy("placement"),
    "VW cb_explore_adf, epsilon 0.05": vw_policy("--epsilon 0.05"),
    "VW cb_explore_adf, bag 10": vw_policy("--bag 10"),
    "uniform random": uniform_policy,
}


def shuffled(stream: Stream, seed: int) -> Iterator[Stream]:
    rows = list(stream)
    random.Random(seed).shuffle(rows)
    yield rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="shuffles of each data set")
    args = p.parse_args()
    print(f"average progressive reward, one pass, mean over {args.seeds} shuffles\n")
    print("| data set | " + " | ".join(POLICIES) + " |")
    print("|---|" + "---:|" * len(POLICIES))
    started = time.time()
    for name, make in DATASETS.items():
        stream, actions = load(make)
        cells = []
        for policy in POLICIES.values():
            values = [policy(rows, actions, seed) for seed in range(args.seeds)
                      for rows in shuffled(stream, seed)]
            cells.append(f"{np.mean(values):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
