"""How an experiment on the placement picks among its eligible arms.

Thompson sampling (a row of the experiment's posterior draws), a fixed split (the
customer's bucket), a promoted winner, or nothing for customers outside it. Each
returns the candidates kept, the arms dropped, and the :class:`Allocation` that
the first-slot distribution (:mod:`engine.decide.distribution`) needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import numpy as np

from dsl.ruleset import Experiment
from dsl.vocabulary import ReasonKind
from engine.decide.decision import RankedAction, Reason
from engine.decide.scoring import Scorer
from engine.decide.tracer import Tracer
from engine.experiments.bucketing import fixed_arm
from engine.experiments.posteriors import BetaPosterior, Posterior
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.state import ExperimentState

CUSTOM_FORMULA_ROWS = 64
"""Posterior rows a custom ``rank:`` formula is evaluated on per Thompson decision."""
EXPERIMENT = ReasonKind.EXPERIMENT


@dataclass(slots=True)
class Allocation:
    """How an experiment chose among its eligible arms: its equally likely (Thompson: one
    per row of posterior draws) or weighted (fixed split: one per arm) outcomes.

    Per outcome: ``winners`` the index into ``arms`` of the arm kept (-1: none),
    ``scores`` its score (NaN: the arm's own model score), ``weights`` its probability.
    ``ladders`` (Thompson's, made once with its posterior rows; empty: made when needed):
    :func:`ladders` of these outcomes, for the first-slot distribution's binary searches.
    """

    arms: list[RankedAction]
    winners: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    ladders: tuple[Ladder, ...] = ()


class Allocated(NamedTuple):
    """The candidates an experiment kept (its arm replaced by the played one), the arms
    it dropped, and its allocation (None: nothing random happened)."""

    kept: list[RankedAction]
    dropped: list[RankedAction]
    allocation: Allocation | None = None
    memo: dict[Any, Any] | None = None  # the experiment state's memo, for the distribution
    key: Any = None  # what the allocation was computed from (the arms' values)


def _split(candidates: list[RankedAction], arms: list[RankedAction],
           chosen: RankedAction | None) -> tuple[list[RankedAction], list[RankedAction]]:
    """(candidates with the arms other than ``chosen`` removed and ``chosen`` in place, dropped)."""
    played = chosen.action_id if chosen is not None else None
    dropped = [a for a in arms if a.action_id != played]
    gone = {a.action_id for a in dropped}
    kept = [chosen if c.action_id == played and chosen is not None else c
            for c in candidates if c.action_id not in gone]
    return kept, dropped


def allocate_thompson(experiment: Experiment, candidates: list[RankedAction],
                      state: ExperimentState, sampler: ThompsonSampler, scorer: Scorer,
                      linear: bool, tracer: Tracer) -> Allocated:
    """Thompson sampling among the eligible arms.

    A row of the experiment's posterior draws is picked at random; the arm whose
    score with its sampled mean as the propensity is largest (``sample * value *
    weight`` by default) is played with the sample as its propensity, the other
    arms drop out. With a value reward (``conversion.value``) the sample is revenue
    per impression, what ``propensity * value`` stands for: the arm's propensity is
    the sample over its value (so an arm is not ranked by revenue times its value
    again, against actions ranked by a probability times theirs). ``linear`` says the
    score is that default product, so every row is scored at once; a custom
    ``rank:`` formula is called per row on the first :data:`CUSTOM_FORMULA_ROWS` rows
    only.
    """
    arms = [c for c in candidates if c.action_id in experiment.arms]
    if not arms:
        return Allocated(candidates, [])
    key = tuple((a.action_id, a.value, a.weight) for a in arms) if linear else None
    rows = state.memo.get(key) if key is not None else None
    if rows is None:
        rows = _score_rows(experiment, arms, state, scorer, linear)
        if key is not None:
            state.remember(key, rows)
    columns, draws, scores, winners, allocation_weights, top_scores, arm_ladders = rows
    row = int(sampler.integers(len(draws)))
    best = int(winners[row])
    played = arms[best]
    chosen = RankedAction(played.action_id, float(scores[row, best]),
                          _propensity(experiment, played, float(draws[row, best])),
                          played.value, played.weight, played.priority,
                          experiment=experiment.name, arm=played.action_id, tags=played.tags)
    allocation = Allocation(arms, winners, top_scores, allocation_weights, arm_ladders)
    if tracer.enabled:
        _trace_thompson(experiment, arms, chosen, best, draws[row], winners, state, columns,
                        tracer)
    kept, dropped = _split(candidates, arms, chosen)
    memo = state.memo if key is not None else None
    return Allocated(kept, dropped, allocation, memo, key)


def _score_rows(experiment: Experiment, arms: list[RankedAction], state: ExperimentState,
                scorer: Scorer, linear: bool) -> tuple[Any, ...]:
    """Every posterior row scored: (columns, draws, scores, winner per row, row weights,
    the winner's score per row, each arm's ladder (:class:`Allocation`))."""
    columns = [experiment.arms.index(a.action_id) for a in arms]
    draws = state.draws[:, columns]
    if linear:
        scores = draws * np.array([_per_draw(experiment, a) for a in arms])
    else:
        draws = draws[:CUSTOM_FORMULA_ROWS]
        scores = np.array([[scorer(arm, _propensity(experiment, arm, float(x)))
                            for arm, x in zip(arms, row, strict=True)] for row in draws])
    winners = np.argmax(scores, axis=1)
    weights = np.full(len(scores), 1.0 / len(scores))
    top = scores[np.arange(len(scores)), winners]
    return columns, draws, scores, winners, weights, top, ladders(winners, top, weights,
                                                                  len(arms))


def _propensity(experiment: Experiment, arm: RankedAction, draw: float) -> float:
    """The propensity a posterior draw stands for: the draw itself (a click or conversion
    rate), or with a value reward the draw (revenue per impression) over the arm's value
    (0 for an arm worth nothing)."""
    if not experiment.reward_value:
        return draw
    return draw / arm.value if arm.value else 0.0


def _per_draw(experiment: Experiment, arm: RankedAction) -> float:
    """The default score per unit of a draw: ``value * weight``, or with a value reward
    ``weight`` (the draw is already ``propensity * value``; 0 for an arm worth nothing)."""
    if not experiment.reward_value:
        return arm.value * arm.weight
    return arm.weight if arm.value else 0.0


class Ladder(NamedTuple):
    """One arm's outcomes, for the first-slot distribution's binary searches: the fixed
    (not NaN) scores of the outcomes it wins, ascending; the weight of those outcomes from
    each index on (ending with 0); and the weight of the outcomes it wins at its own
    model's score (NaN: a fixed split). Lists: searched per bag member with ``bisect``."""

    scores: list[float]
    above: list[float]
    own: float


def ladders(winners: np.ndarray, scores: np.ndarray, weights: np.ndarray, arms: int
            ) -> tuple[Ladder, ...]:
    """Per arm, its :class:`Ladder`.

    >>> (s, w, own), = ladders(np.array([0, 0, 0, 0]), np.array([0.3, 0.1, np.nan, 0.2]),
    ...                        np.array([0.4, 0.2, 0.2, 0.2]), 1)
    >>> s, [round(x, 6) for x in w], round(own, 6)
    ([0.1, 0.2, 0.3], [0.8, 0.6, 0.4, 0.0], 0.2)
    """
    fixed = ~np.isnan(scores)
    out = []
    for j in range(arms):
        won = winners == j
        mine = won & fixed
        order = np.argsort(scores[mine], kind="stable")
        below = np.concatenate(([0.0], np.cumsum(weights[mine][order])))
        out.append(Ladder(scores[mine][order].tolist(), (below[-1] - below).tolist(),
                          float(weights[won & ~fixed].sum())))
    return tuple(out)


def _trace_thompson(experiment: Experiment, arms: list[RankedAction], chosen: RankedAction,
                    best: int, row: np.ndarray, winners: np.ndarray, state: ExperimentState,
                    columns: list[int], tracer: Tracer) -> None:
    posterior = state.posteriors[columns[best]]
    shares = np.bincount(winners, minlength=len(arms)) / len(winners)
    sample = float(row[best])  # (with a value reward, revenue per impression)
    terms = {"propensity": chosen.propensity, "thompson_sample": sample,
             "posterior_mean": posterior.mean, "model_propensity": arms[best].propensity,
             "allocation": float(shares[best])}
    if isinstance(posterior, BetaPosterior):
        terms.update(posterior_alpha=posterior.alpha, posterior_beta=posterior.beta)
    tracer.score_terms(chosen.action_id, terms)
    tracer.check(chosen.action_id, Reason(
        EXPERIMENT, experiment.name, True,
        f"arm {chosen.action_id} sampled {sample:.4f} from "
        f"{describe(posterior)}; wins {shares[best]:.0%} of posterior draws among "
        f"{len(arms)} eligible arm(s)", str(experiment.pos)))
    for i, arm in enumerate(arms):
        if i != best:
            tracer.check(arm.action_id, Reason(
                EXPERIMENT, experiment.name, False,
                f"arm not played: sampled {float(row[i]):.4f} from "
                f"{describe(state.posteriors[columns[i]])}; wins {shares[i]:.0%} of "
                "posterior draws", str(experiment.pos)))


def describe(posterior: Posterior) -> str:
    """A posterior as people read it: ``Beta(3, 41)``."""
    if isinstance(posterior, BetaPosterior):
        return f"Beta({posterior.alpha:g}, {posterior.beta:g})"
    return (f"NormalGamma(mu={posterior.mu:.4g}, kappa={posterior.kappa:g}, "
            f"alpha={posterior.alpha:g}, beta={posterior.beta:.4g})")


def allocate_fixed(experiment: Experiment, candidates: list[RankedAction], user_id: str,
                   tracer: Tracer) -> Allocated:
    """A fixed split (A/B/n): the customer's bucket picks the arm, sticky across calls.

    If the assigned arm is not eligible for this customer now, no arm is shown (the
    others must not stand in for it, or the split would be biased). Over customers
    the assignment is random with the arms' shares, which is the probability that
    off-policy evaluation needs.
    """
    arm = fixed_arm(experiment, user_id)
    arms = [c for c in candidates if c.action_id in experiment.arms]
    assigned = next((c for c in arms if c.action_id == arm), None)
    chosen = (msgspec.structs.replace(assigned, experiment=experiment.name, arm=arm)
              if assigned is not None else None)
    total = sum(experiment.weights)
    index = {c.action_id: i for i, c in enumerate(arms)}
    allocation = Allocation(
        arms, np.array([index.get(a, -1) for a in experiment.arms]),
        np.full(len(experiment.arms), np.nan), np.array(experiment.weights) / total)
    if tracer.enabled:
        share = experiment.weights[experiment.arms.index(arm)] / total
        for c in arms:
            played = c.action_id == arm
            tracer.check(c.action_id, Reason(
                EXPERIMENT, experiment.name, played,
                f"fixed split assigns arm {arm} ({share:.0%} of customers)"
                + ("" if played else "; this arm is not played"), str(experiment.pos)))
    kept, dropped = _split(candidates, arms, chosen)
    return Allocated(kept, dropped, allocation)


def promote_winner(experiment: Experiment, candidates: list[RankedAction], tracer: Tracer
                   ) -> Allocated:
    """``winner: arm``: the experiment is over, its winner is a plain action, the others go."""
    arms = [c for c in candidates if c.action_id in experiment.arms]
    if tracer.enabled:
        for c in arms:
            won = c.action_id == experiment.winner
            tracer.check(c.action_id, Reason(
                EXPERIMENT, experiment.name, won,
                f"experiment ended, winner {experiment.winner} promoted"
                + ("" if won else "; this arm is retired"), str(experiment.pos)))
    winner = next((c for c in arms if c.action_id == experiment.winner), None)
    kept, dropped = _split(candidates, arms, winner)
    return Allocated(kept, dropped)
