"""Posteriors, vectorised Thompson sampling, discounting and the report statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dsl.ast import Pos
from dsl.ruleset import BetaPrior, Experiment, NormalGammaPrior
from engine.experiments.posteriors import (
    BetaPosterior,
    beta_posterior,
    expected_loss,
    normal_gamma_posterior,
    posterior_of,
    sample_means,
    win_probabilities,
)
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.windows import BUCKET_SECONDS, counter_keys, discounted
from engine.records import ArmCounts

POS = Pos("t.arb", 1, 1)


def experiment(**kw: object) -> Experiment:
    return Experiment("e", "p", ("a", "b"), BetaPrior(), "click", POS, **kw)  # type: ignore[arg-type]


def test_beta_posterior_from_counts_and_prior() -> None:
    assert beta_posterior(None, BetaPrior(1, 1)) == (1.0, 1.0)
    assert beta_posterior(ArmCounts(10, 3), BetaPrior(2, 5)) == (5.0, 12.0)
    assert beta_posterior(ArmCounts(1, 3), BetaPrior()) == (4.0, 1.0)  # never negative
    assert BetaPosterior(3.0, 1.0).mean == 0.75


def test_normal_gamma_matches_the_textbook_update() -> None:
    rng = np.random.default_rng(4)
    xs = rng.normal(3.0, 2.0, size=500)
    post = normal_gamma_posterior(ArmCounts(len(xs), xs.sum(), (xs**2).sum()),
                                  NormalGammaPrior(0.0, 1.0, 1.0, 1.0))
    # Murphy (2007), eq. 86-89, written out independently
    n, mean = len(xs), xs.mean()
    assert post.mu == pytest.approx(n * mean / (1 + n))
    assert post.kappa == 1 + n and post.alpha == 1 + n / 2
    assert post.beta == pytest.approx(1 + 0.5 * ((xs - mean) ** 2).sum()
                                      + n * mean**2 / (2 * (1 + n)))
    lo, hi = post.interval(0.95)
    assert lo < 3.0 < hi and hi - lo < 0.5
    # the sampled means have the Student-t marginal the interval is computed from
    draws = sample_means([post], np.random.default_rng(1), 40_000)[:, 0]
    assert np.quantile(draws, [0.025, 0.975]) == pytest.approx([lo, hi], rel=0.02)


def test_beta_interval_is_scipys() -> None:
    post = posterior_of(ArmCounts(200, 30), BetaPrior())
    assert post.interval(0.9) == pytest.approx(tuple(stats.beta.ppf([0.05, 0.95], 31, 171)))


def test_sampler_is_reproducible_with_a_seed() -> None:
    arms = [BetaPosterior(2.0, 3.0), BetaPosterior(5.0, 1.0)]
    assert np.array_equal(ThompsonSampler(3).sample_many(arms, 8),
                          ThompsonSampler(3).sample_many(arms, 8))
    assert ThompsonSampler(3).sample_many(arms, 8).shape == (8, 2)


def test_thompson_sampling_concentrates_on_the_best_arm() -> None:
    rng = np.random.default_rng(0)
    rates = [0.02, 0.05, 0.12]
    counts = [ArmCounts() for _ in rates]
    sampler = ThompsonSampler(1)
    plays = [0, 0, 0]
    for _ in range(4000):
        draws = sampler.sample([posterior_of(c, BetaPrior()) for c in counts])
        arm = int(np.argmax(draws))
        plays[arm] += 1
        counts[arm].trials += 1
        counts[arm].successes += float(rng.random() < rates[arm])
    assert plays[2] > 0.7 * sum(plays), plays


def test_win_probability_and_expected_loss() -> None:
    draws = np.array([[0.1, 0.2], [0.3, 0.2], [0.1, 0.4], [0.0, 0.5]])
    assert win_probabilities(draws).tolist() == [0.25, 0.75]
    assert expected_loss(draws).tolist() == pytest.approx([0.225, 0.025])


def test_counters_are_bucketed_by_decision_hour_only_when_windowed() -> None:
    assert counter_keys("a", 7300.0, windowed=False) == ("a",)
    assert counter_keys("a", 7300.0, windowed=True) == ("a", "a@2")


def test_window_drops_old_buckets_and_half_life_discounts() -> None:
    raw = {"a": ArmCounts(110, 11), "a@0": ArmCounts(100, 10), "a@10": ArmCounts(10, 1)}
    now = 10.5 * BUCKET_SECONDS
    assert discounted(raw, experiment(), now) == {"a": ArmCounts(110, 11)}
    assert discounted(raw, experiment(window=5 * 3600.0), now) == {"a": ArmCounts(10, 1)}
    half = discounted(raw, experiment(half_life=10 * 3600.0), now)["a"]
    assert half.trials == pytest.approx(100 * 0.5 + 10) and half.successes == pytest.approx(6)


def test_discounting_follows_a_drifting_best_arm() -> None:
    """Arm a is best for 20 days, then b: the discounted posterior switches, the plain one not."""
    raw: dict[str, ArmCounts] = {}
    for day in range(30):
        rates = {"a": 0.10, "b": 0.05} if day < 20 else {"a": 0.05, "b": 0.10}
        for arm, rate in rates.items():
            for key in counter_keys(arm, day * 86400.0, windowed=True):
                c = raw.setdefault(key, ArmCounts())
                c.trials += 1000
                c.successes += 1000 * rate
    now = 30 * 86400.0
    plain = discounted(raw, experiment(), now)
    recent = discounted(raw, experiment(half_life=2 * 86400.0), now)
    mean = {k: {a: posterior_of(c, BetaPrior()).mean for a, c in d.items()}
            for k, d in (("plain", plain), ("recent", recent))}
    assert mean["plain"]["a"] > mean["plain"]["b"]
    assert mean["recent"]["b"] > mean["recent"]["a"]
