"""Experiment reports: how each arm is doing and how sure we are. Pure computation.

Per arm: exposures (impressions), rewards, the posterior mean with its 95% central
credible interval, the probability of being best and the expected loss (both from
``REPORT_DRAWS`` joint posterior draws, as in GrowthBook's Bayesian engine), and
the current allocation: the arm's share of posterior draws under Thompson
sampling, its weight share under a fixed split, 1 for a promoted winner.

Fixed splits get a sample-ratio-mismatch check: a chi-square goodness-of-fit test
of the arms' exposures against their weights; ``p < 0.001`` flags a mismatch
(a broken assignment or logging, not a result to trust). It counts the exposures made
since the weights last changed (:mod:`engine.experiments.splits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from dsl.ruleset import BetaPrior, Experiment
from dsl.vocabulary import HOLDOUT_ARM
from engine.experiments.posteriors import (
    Posterior,
    arms_prior,
    expected_loss,
    experiment_posteriors,
    posterior_of,
    sample_means,
    win_probabilities,
)
from engine.experiments.splits import exposures_since
from engine.experiments.windows import discounted
from engine.records import ArmCounts

REPORT_DRAWS = 20_000
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class ArmReport:
    arm: str
    exposures: float
    rewards: float
    posterior: Posterior
    ci: tuple[float, float]
    prob_best: float = 0.0
    expected_loss: float = 0.0
    allocation: float = 0.0

    @property
    def mean(self) -> float:
        return self.posterior.mean


@dataclass(frozen=True)
class SampleRatio:
    applies: bool
    p_value: float = 1.0
    since_change: bool = False  # counted from the last change of the weights

    @property
    def mismatch(self) -> bool:
        return self.applies and self.p_value < SRM_THRESHOLD


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str
    placement: str
    allocation: str  # thompson | weights | winner
    reward: str
    posterior: str  # beta | normal_gamma
    arms: tuple[ArmReport, ...]
    holdout: ArmReport | None
    holdout_percent: float
    srm: SampleRatio
    revision: str = ""
    winner: str | None = None
    draws: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def leading_arm(self) -> ArmReport:
        """The arm most likely best, on its posterior (its prior alone, if never shown)."""
        return max(self.arms, key=lambda a: (a.prob_best, a.mean))

    @property
    def best_arm(self) -> str:
        """The leading arm once it has been shown; "" before (nothing to call yet)."""
        leader = self.leading_arm
        return leader.arm if leader.exposures or self.winner else ""

    def render(self) -> str:
        """The report as a table (``arbiter report``)."""
        lines = [
            f"experiment {self.experiment} on {self.placement}  ({self.allocation}, "
            f"reward {self.reward}, {self.posterior} posterior)",
        ]
        if self.revision:
            lines[0] += f"  ruleset {self.revision}"
        header = (f"{'arm':<20} {'exposures':>10} {'rewards':>10} {'mean':>9} "
                  f"{'95% interval':>21} {'P(best)':>8} {'exp. loss':>10} {'alloc':>7}")
        lines += [header, "-" * len(header)]
        for a in (*self.arms, *((self.holdout,) if self.holdout else ())):
            interval = f"[{a.ci[0]:.4g}, {a.ci[1]:.4g}]"
            best = f"{a.prob_best:8.1%}" if a is not self.holdout else f"{'-':>8}"
            loss = f"{a.expected_loss:10.4g}" if a is not self.holdout else f"{'-':>10}"
            lines.append(f"{a.arm:<20} {a.exposures:>10.0f} {a.rewards:>10.4g} {a.mean:>9.4g} "
                         f"{interval:>21} {best} {loss} {a.allocation:>7.1%}")
        unseen = [a.arm for a in self.arms if not a.exposures]
        if len(unseen) == len(self.arms):
            lines.append("best arm: none yet (no exposures: every arm is at its prior)")
        elif not self.best_arm:
            lines.append(f"best arm: none yet ({self.leading_arm.arm} leads on its prior "
                         "alone: it has not been shown)")
        else:
            lines.append(f"best arm: {self.best_arm}"
                         f" (P(best) {max(a.prob_best for a in self.arms):.1%})")
        if unseen and len(unseen) < len(self.arms) and not self.winner:
            lines.append(f"not shown yet: {', '.join(unseen)} (at the prior; an arm that is "
                         "rarely eligible may never be)")
        if self.winner:
            lines.append(f"ended: winner {self.winner} promoted to everyone")
        if self.holdout is not None and self.holdout.exposures > 0:
            leader = self.leading_arm
            lift = leader.mean / self.holdout.mean - 1 if self.holdout.mean else float("nan")
            lines.append(f"holdout {self.holdout_percent:g}%: mean {self.holdout.mean:.4g}; "
                         f"best arm vs holdout: {lift:+.1%}")
        if self.srm.applies:
            verdict = "MISMATCH: do not trust this split" if self.srm.mismatch else "ok"
            since = " (exposures since the weights changed)" if self.srm.since_change else ""
            lines.append(f"sample ratio check{since}: p = {self.srm.p_value:.4g} ({verdict})")
        return "\n".join(lines)


def sample_ratio(experiment: Experiment, raw: Mapping[str, ArmCounts],
                 split: tuple[str, Mapping[str, float]] | None = None) -> SampleRatio:
    """Chi-square test of the exposures made under the fixed split's weights (all-time
    ``raw`` counters less the phase's baseline, ``split``) against those weights."""
    if not experiment.weights:
        return SampleRatio(False)
    since, changed = exposures_since(experiment, raw, split)
    observed = np.array([since[a] for a in experiment.arms])
    weights = np.array(experiment.weights, dtype=float)
    keep = weights > 0
    if observed[keep].sum() <= 0 or keep.sum() < 2:
        return SampleRatio(True, 1.0, changed)
    expected = weights[keep] / weights[keep].sum() * observed[keep].sum()
    result = stats.chisquare(observed[keep], expected)
    return SampleRatio(True, float(result.pvalue), changed)


def experiment_report(experiment: Experiment, raw: Mapping[str, ArmCounts], now: float,
                      seed: int = 0, revision: str = "",
                      split: tuple[str, Mapping[str, float]] | None = None
                      ) -> ExperimentReport:
    """The report from the experiment's raw counters (as the store keeps them) and, for a
    fixed split, the store's mark of its phase (:meth:`~engine.ports.Store.split_mark`)."""
    counts = discounted(raw, experiment, now)
    posteriors = list(experiment_posteriors(experiment.prior, experiment.arms, counts))
    draws = sample_means(posteriors, np.random.default_rng(seed), REPORT_DRAWS)
    prob_best = win_probabilities(draws)
    loss = expected_loss(draws)
    if experiment.winner is not None:
        kind = "winner"
        allocation = [float(arm == experiment.winner) for arm in experiment.arms]
    elif experiment.weights:
        kind = "weights"
        allocation = [w / sum(experiment.weights) for w in experiment.weights]
    else:
        kind = "thompson"
        allocation = list(prob_best)
    arms = tuple(
        ArmReport(arm, counts.get(arm, ArmCounts()).trials,
                  counts.get(arm, ArmCounts()).successes, post, post.interval(0.95),
                  float(prob_best[i]), float(loss[i]), float(allocation[i]))
        for i, (arm, post) in enumerate(zip(experiment.arms, posteriors, strict=True)))
    holdout = None
    if experiment.holdout > 0:
        held = counts.get(HOLDOUT_ARM, ArmCounts())
        # the holdout starts from the arms' prior, so the two are compared on one footing
        post = posterior_of(held, arms_prior(experiment.prior, experiment.arms, counts))
        holdout = ArmReport(HOLDOUT_ARM, held.trials, held.successes, post, post.interval(0.95),
                            allocation=experiment.holdout / 100.0)
    return ExperimentReport(
        experiment=experiment.name,
        placement=experiment.placement,
        allocation=kind,
        reward=experiment.reward + (".value" if experiment.reward_value else ""),
        posterior="beta" if isinstance(experiment.prior, BetaPrior) else "normal_gamma",
        arms=arms,
        holdout=holdout,
        holdout_percent=experiment.holdout,
        srm=sample_ratio(experiment, raw, split),
        revision=revision,
        winner=experiment.winner,
        draws={arm: draws[:, i] for i, arm in enumerate(experiment.arms)},
    )
