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
experiments at their priors, on a private store from the given factory that holds
each logged profile while its decision is replayed; its propensity models learn from
the log's outcomes as the replay goes (so replaying the serving ruleset on its own log
estimates the logged value).

>>> rewards, pi, mu = np.array([1.0, 0.0, 1.0]), np.array([0.5, 1.0, 1.0]), np.array([1, 1, 0.5])
>>> value, se = ips(rewards, pi, mu)  # terms r * pi / mu: 0.5, 0, 2
>>> round(value, 3), round(se, 3)
(0.833, 0.601)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import numpy as np

from dsl.ruleset import Ruleset
from dsl.vocabulary import REWARD_OUTCOMES
from engine.decide.decision import Decision
from engine.learning.delayed import fake_negative_weight, positive_weight
from engine.ports import StoreFactory
from engine.records import Profile
from engine.requests import InvalidArgument
from engine.service import Arbiter

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_CELLS = 4_000_000
"""Resampled indices held at once by the bootstrap (about 32 MB)."""
PROGRESS_EVERY = 10_000


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
    learnt: int = 0  # logged outcomes the candidate's models learnt from
    unshown: int = 0  # selected logged decisions that showed nothing (or no probability)

    def render(self) -> str:
        def line(name: str, e: Estimate) -> str:
            return f"{name:<22} {e.value:>9.4f}   95% [{e.low:.4f}, {e.high:.4f}]"

        if not self.decisions:  # (no estimate at all, not estimates of 0 and a lift of nan)
            return (f"nothing to replay (reward: {self.reward}): no logged decision with a "
                    "shown action and its logged probability (damaged lines are skipped, "
                    "with a warning; --placement and --experiment select); "
                    f"{self.skipped} skipped")
        lift = (self.snips.value / self.logged.value - 1) if self.logged.value else float("nan")
        return "\n".join([
            f"replayed {self.decisions} logged decisions (reward: {self.reward}); "
            f"{self.skipped} skipped; candidate agrees with the log on {self.matched}"
            + (f"\n{self.unshown} logged decisions showed nothing, or no first-slot "
               "probability: not replayed (what a candidate would show there was never "
               "explored)" if self.unshown else ""),
            line("logged policy", self.logged),
            line("candidate, IPS", self.ips),
            line("candidate, SNIPS", self.snips),
            f"effective sample size {self.effective_sample_size:.0f}; "
            f"SNIPS vs logged: {lift:+.1%}",
            f"the candidate's models learnt from {self.learnt} logged outcomes as it replayed",
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


def _bootstrap(rewards: np.ndarray, pi: np.ndarray, mu: np.ndarray, seed: int,
               chunk: int = 0) -> tuple[float, float]:
    """95% interval of SNIPS from BOOTSTRAP_SAMPLES resamples, a few at a time so memory
    stays near ``BOOTSTRAP_CELLS`` numbers however long the log."""
    rng = np.random.default_rng(seed)
    n = len(rewards)
    chunk = chunk or max(1, min(BOOTSTRAP_SAMPLES, BOOTSTRAP_CELLS // max(n, 1)))
    w_all, wr_all = pi / mu, pi / mu * rewards
    values = np.empty(BOOTSTRAP_SAMPLES)
    for start in range(0, BOOTSTRAP_SAMPLES, chunk):
        size = min(chunk, BOOTSTRAP_SAMPLES - start)
        idx = rng.integers(0, n, size=(size, n))
        totals = w_all[idx].sum(axis=1)
        values[start:start + size] = np.where(
            totals > 0, wr_all[idx].sum(axis=1) / np.maximum(totals, 1e-300), 0.0)
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


def candidate_decision(arbiter: Arbiter, entry: dict[str, Any]) -> Decision:
    """The candidate's decision on a logged decision's input.

    The arbiter's store is private to the replay: it is given the logged profile.
    """
    user = entry["user_id"]
    profile_data = entry.get("profile")
    store = arbiter.store
    store.forget(user)
    if profile_data is not None:
        profile = msgspec.convert(profile_data, Profile, strict=False)  # JSON keys are strings
        store.update_profile(user, lambda _: profile)
    decision = arbiter.decide(user_id=user, placement=entry["placement"],
                              channel=entry.get("channel", ""),
                              context=entry.get("context") or {}, at=entry["at"])
    return decision


Entries = Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]
"""The log: a re-iterable collection, or a function that reads it afresh (two passes)."""


def _entries(log: Entries) -> Iterable[dict[str, Any]]:
    return log() if callable(log) else log


def _selected(entry: dict[str, Any], placement: str | None, experiment: str | None) -> bool:
    if placement is not None and entry.get("placement") != placement:
        return False
    if experiment is None:
        return True
    return entry.get("holdout") == experiment or any(
        a.get("experiment") == experiment for a in entry.get("actions", ()))


def replay(log: Entries, candidate: Ruleset, store_factory: StoreFactory, *,
           reward: str = "click", value: bool = False, seed: int = 0,
           placement: str | None = None, experiment: str | None = None,
           progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Evaluate ``candidate`` on the logged decisions (two streaming passes over ``log``).

    The first pass collects the rewards; the second replays each decision, in log
    order, and lets the candidate's models learn from the logged outcomes as they
    come (:class:`LogLearner`), as the serving models did.
    """
    rewards_of = rewards_by_decision(_entries(log), reward, value)
    now = [0.0]
    arbiter = Arbiter(candidate, store_factory(lambda: now[0]), seed=seed,
                      clock=lambda: now[0])
    learner = LogLearner(arbiter)
    r, pi, mu = [], [], []
    skipped = unshown = 0
    for entry in _entries(log):
        now[0] = max(now[0], float(entry.get("at") or 0.0))
        if entry.get("kind") == "outcome":
            learner.outcome(entry)
            continue
        if entry.get("kind") != "decision" or not _selected(entry, placement, experiment):
            continue
        first = (entry.get("actions") or [{}])[0]
        probability = float(first.get("probability") or 0.0)
        if probability <= 0:
            unshown += 1
            continue
        try:
            policy = learner.decide(entry)
        except (InvalidArgument, KeyError, msgspec.ValidationError):
            skipped += 1
            continue
        r.append(rewards_of.get((entry["decision_id"], first["action_id"]), 0.0))
        pi.append(policy.get(first["action_id"], 0.0))
        mu.append(probability)
        if progress is not None and len(r) % PROGRESS_EVERY == 0:
            progress(len(r))
    result = _estimate(np.array(r), np.array(pi), np.array(mu), skipped, reward, value, seed)
    return replace(result, learnt=learner.learnt, unshown=unshown)


def _estimate(rewards: np.ndarray, pis: np.ndarray, mus: np.ndarray, skipped: int,
              reward: str, value: bool, seed: int) -> ReplayResult:
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


class LogLearner:
    """The candidate's models learn from the logged outcomes, in log order.

    A logged decision is replayed by the candidate (on the logged profile, context and
    time); the candidate's features for it are kept until the attribution window has
    passed, and each logged outcome then teaches the candidate's model of the action
    the log showed: a (fake) negative at its first outcome, a positive at its first
    reward, as in serving (engine.learning.delayed).
    """

    def __init__(self, arbiter: Arbiter) -> None:
        self.arbiter = arbiter
        # logged decision id -> (decided at, placement, candidate's features, outcomes seen)
        self.shown: OrderedDict[str, tuple[float, str, dict[str, float], set[str]]] = (
            OrderedDict())
        self.learnt = 0

    def decide(self, entry: dict[str, Any]) -> dict[str, float]:
        decision = candidate_decision(self.arbiter, entry)
        record = self.arbiter.store.get_decision(decision.decision_id)
        at = float(entry["at"])
        if record is not None:
            self.shown[entry["decision_id"]] = (at, entry["placement"], record.features, set())
        while self.shown:  # forget decisions past the attribution window
            oldest_at = next(iter(self.shown.values()))[0]
            if oldest_at >= at - self.arbiter.longest_attribution:
                break
            self.shown.popitem(last=False)
        return decision.policy

    def outcome(self, entry: dict[str, Any]) -> None:
        known = self.shown.get(entry.get("decision_id", ""))
        if known is None:
            return
        _, placement, features, seen = known
        action, outcome = entry.get("action_id", ""), entry.get("outcome", "")
        spec, prior = self.arbiter.spec_of(placement, action)
        models = self.arbiter.models
        self.learnt += 1
        if f"{action}:shown" not in seen:
            seen.add(f"{action}:shown")
            models.learn(action, spec, prior, features, False, placement,
                         weight=fake_negative_weight)
        if outcome in REWARD_OUTCOMES and f"{action}:rewarded" not in seen:
            seen.add(f"{action}:rewarded")
            models.learn(action, spec, prior, features, True, placement,
                         weight=positive_weight, new_example=False)
