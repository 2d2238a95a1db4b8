"""Off-policy evaluation: what a candidate ruleset would have earned on logged decisions.

For each logged decision whose first slot was shown with probability ``mu > 0``
(the logging policy's probability, in the log), the candidate ruleset decides
again on the same input (the logged profile, context and time) and gives
``pi``, its probability of putting the same action first. With reward ``r``
(1 when the reward outcome was reported for that action, or its value):

* IPS: ``V = mean(r * pi / mu)``, unbiased when ``mu`` is the true logging
  probability; 95% interval from the normal approximation.
* SNIPS: ``V = sum(r * pi / mu) / sum(pi / mu)``, self-normalised: a little
  biased, much lower variance; 95% interval from a bootstrap over decisions.

The effective sample size ``(sum w)^2 / sum w^2`` says how much of the log the
estimate really rests on. The candidate is evaluated as it is at the start: its
experiments at their priors and its models untrained, on a private store from the
given factory that holds each logged profile while its decision is replayed.

>>> rewards, pi, mu = np.array([1.0, 0.0, 1.0]), np.array([0.5, 1.0, 1.0]), np.array([1, 1, 0.5])
>>> value, se = ips(rewards, pi, mu)  # terms r * pi / mu: 0.5, 0, 2
>>> round(value, 3), round(se, 3)
(0.833, 0.601)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from dsl.ruleset import Ruleset
from engine.ports import StoreFactory
from engine.records import Profile
from engine.requests import InvalidArgument
from engine.service import Arbiter

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ReplayResult:
    decisions: int  # logged decisions with a first slot and its probability
    skipped: int  # logged decisions the candidate could not decide (e.g. schema changed)
    matched: int  # where the candidate's policy gives the logged action pi > 0
    logged: Estimate  # the logging policy's own average reward (on-policy)
    ips: Estimate
    snips: Estimate
    effective_sample_size: float
    reward: str

    def render(self) -> str:
        def line(name: str, e: Estimate) -> str:
            return f"{name:<22} {e.value:>9.4f}   95% [{e.low:.4f}, {e.high:.4f}]"

        lift = (self.snips.value / self.logged.value - 1) if self.logged.value else float("nan")
        return "\n".join([
            f"replayed {self.decisions} logged decisions (reward: {self.reward}); "
            f"{self.skipped} skipped; candidate agrees with the log on {self.matched}",
            line("logged policy", self.logged),
            line("candidate, IPS", self.ips),
            line("candidate, SNIPS", self.snips),
            f"effective sample size {self.effective_sample_size:.0f}; "
            f"SNIPS vs logged: {lift:+.1%}",
        ])


def ips(rewards: np.ndarray, pi: np.ndarray, mu: np.ndarray) -> tuple[float, float]:
    """IPS estimate and its standard error."""
    terms = rewards * pi / mu
    se = float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1 else 0.0
    return float(terms.mean()), se


def snips(rewards: np.ndarray, pi: np.ndarray, mu: np.ndarray) -> float:
    weights = pi / mu
    total = weights.sum()
    return float((weights * rewards).sum() / total) if total > 0 else 0.0


def _bootstrap(rewards: np.ndarray, pi: np.ndarray, mu: np.ndarray, seed: int
               ) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(rewards)
    idx = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    w = pi[idx] / mu[idx]
    totals = w.sum(axis=1)
    values = np.where(totals > 0, (w * rewards[idx]).sum(axis=1) / np.maximum(totals, 1e-300),
                      0.0)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


def rewards_by_decision(entries: Iterable[dict[str, Any]], reward: str, value: bool
                        ) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for e in entries:
        if e.get("kind") == "outcome" and e.get("outcome") == reward:
            key = (e["decision_id"], e["action_id"])
            out[key] = float(e.get("value") or 0.0) if value else 1.0
    return out


def candidate_policy(arbiter: Arbiter, entry: dict[str, Any]) -> dict[str, float]:
    """The candidate's first-slot distribution on a logged decision's input.

    The arbiter's store is private to the replay: it is given the logged profile.
    """
    user = entry["user_id"]
    profile_data = entry.get("profile")
    store = arbiter.store
    store.forget(user)
    if profile_data is not None:
        profile = msgspec.convert(profile_data, Profile)
        store.update_profile(user, lambda _: profile)
    decision = arbiter.decide(user_id=user, placement=entry["placement"],
                              channel=entry.get("channel", ""),
                              context=entry.get("context") or {}, at=entry["at"])
    return decision.policy


def replay(entries: list[dict[str, Any]], candidate: Ruleset, store_factory: StoreFactory, *,
           reward: str = "click", value: bool = False, seed: int = 0) -> ReplayResult:
    """Evaluate ``candidate`` on the logged decisions in ``entries``."""
    rewards_of = rewards_by_decision(entries, reward, value)
    at = max((float(e["at"]) for e in entries if e.get("kind") == "decision"), default=0.0)
    arbiter = Arbiter(candidate, store_factory(lambda: at + 1.0), seed=seed,
                      clock=lambda: at + 1.0)
    r, pi, mu = [], [], []
    skipped = 0
    for entry in entries:
        if entry.get("kind") != "decision" or not entry.get("actions"):
            continue
        first = entry["actions"][0]
        probability = float(first.get("probability") or 0.0)
        if probability <= 0:
            continue
        try:
            policy = candidate_policy(arbiter, entry)
        except (InvalidArgument, KeyError, msgspec.ValidationError):
            skipped += 1
            continue
        r.append(rewards_of.get((entry["decision_id"], first["action_id"]), 0.0))
        pi.append(policy.get(first["action_id"], 0.0))
        mu.append(probability)
    rewards, pis, mus = np.array(r), np.array(pi), np.array(mu)
    n = len(rewards)
    if n == 0:
        zero = Estimate(0.0, 0.0, 0.0)
        return ReplayResult(0, skipped, 0, zero, zero, zero, 0.0, reward)
    mean = float(rewards.mean())
    se = float(rewards.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    value_ips, se_ips = ips(rewards, pis, mus)
    weights = pis / mus
    ess = float(weights.sum() ** 2 / (weights**2).sum()) if weights.any() else 0.0
    low, high = _bootstrap(rewards, pis, mus, seed)
    return ReplayResult(
        decisions=n,
        skipped=skipped,
        matched=int((pis > 0).sum()),
        logged=Estimate(mean, mean - 1.96 * se, mean + 1.96 * se),
        ips=Estimate(value_ips, value_ips - 1.96 * se_ips, value_ips + 1.96 * se_ips),
        snips=Estimate(snips(rewards, pis, mus), low, high),
        effective_sample_size=ess,
        reward=reward + (".value" if value else ""),
    )
