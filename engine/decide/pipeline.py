"""The Decide pipeline: one decision from a loaded profile to the record to store. No I/O.

profile → facts → segments → eligibility (channel, validity, consent, conditions,
contact policies) → score (propensity by the placement's formula) → experiment
allocation (Thompson sampling, fixed split, winner, holdout) → rank → render →
decision record. The service (:mod:`engine.service`) loads the profile before and
stores the record after. Each stage reports to a :class:`~engine.decide.tracer.Tracer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dsl.ruleset import Experiment, Ruleset
from dsl.vocabulary import HOLDOUT_ARM, SEND_TIME_ATTRIBUTE, ReasonKind
from engine.decide.allocation import (
    Allocated,
    allocate_fixed,
    allocate_thompson,
    promote_winner,
)
from engine.decide.decision import Decision, RankedAction, Reason
from engine.decide.distribution import top_distribution
from engine.decide.facts import Facts, build_facts, evaluate_segments, features_of
from engine.decide.inputs import DecideInput
from engine.decide.ranking import fallback_action, rank, render_content
from engine.decide.scoring import Candidates, Scorer, score_candidates, scorer_for
from engine.decide.send_time import NO_PRIOR, Prior, SendTime
from engine.decide.tracer import NULL_TRACER, ExplainTracer, Tracer, combine
from engine.experiments.bucketing import in_holdout, takes_part
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.state import MEMO_LIMIT, ExperimentState
from engine.learning.models import PropensityModels
from engine.records import DecisionRecord, Profile, ShownAction

StateOf = Callable[[Experiment], ExperimentState]


class Learnt(NamedTuple):
    """What a decision reads of the learnt state: models, posteriors, the random source."""

    models: PropensityModels
    experiment_state: StateOf
    sampler: ThompsonSampler


def run(ruleset: Ruleset, req: DecideInput, profile: Profile | None, *, decision_id: str,
        models: PropensityModels, experiment_state: StateOf, sampler: ThompsonSampler,
        tracer: Tracer | None = None, population: Prior = NO_PRIOR,
        percentiles: object = None, recommendations: object = None, clusters: object = None,
        scores: object = None) -> tuple[Decision, DecisionRecord]:
    """One decision, from a loaded profile to the record to store.

    ``req.explain`` adds an :class:`ExplainTracer` (reasons and traces in the
    decision); ``tracer`` listens too (``arbiter test`` coverage, say).
    """
    explainer = ExplainTracer() if req.explain else None
    trace = NULL_TRACER if explainer is None and tracer is None else combine(explainer, tracer)
    trace.stage("segments")
    facts = build_facts(ruleset, profile, req, population, percentiles, recommendations,
                        clusters, scores)
    try:
        return _decide(ruleset, req, profile, facts, decision_id, models, experiment_state,
                       sampler, trace, explainer)
    finally:
        facts.close()


def _decide(ruleset: Ruleset, req: DecideInput, profile: Profile | None, facts: Facts,
            decision_id: str, models: PropensityModels, experiment_state: StateOf,
            sampler: ThompsonSampler, trace: Tracer, explainer: ExplainTracer | None
            ) -> tuple[Decision, DecisionRecord]:
    evaluate_segments(ruleset, facts, trace)
    trace.stage("scoring")
    spec = ruleset.model_of(req.placement.name)
    features = features_of(facts, spec, ruleset.private_context)
    member = int(sampler.integers(spec.bagging)) if spec.bagging else 0
    scorer = scorer_for(ruleset, req.placement, facts)
    scored = score_candidates(ruleset, req, facts, profile, models, spec, features, member,
                              scorer, trace)
    trace.stage("allocation")
    experiment = _experiment_for(ruleset, req)
    holdout = (experiment is not None and experiment.winner is None
               and in_holdout(experiment, req.user_id))  # (an ended one holds out no one)
    if holdout:
        allocated = _hold_out(experiment, scored.actions, trace)
    else:
        allocated = _allocate(experiment, scored.actions, req,
                              Learnt(models, experiment_state, sampler), scorer, trace)
    trace.stage("ranking")
    ranked, policy = _choose(ruleset, req, facts, allocated, scored, experiment, holdout, trace)
    trace.stage("content")
    for shown in ranked:
        render_content(ruleset, shown, facts)
    traces = explainer.explain(ruleset, req.placement, ranked) if explainer else ()
    trace.stage("")
    held_out = experiment.name if holdout and experiment is not None else None
    matched = tuple(name for name, hit in facts.segments.items() if hit is True)
    decision = Decision(decision_id, ruleset.revision, req.now, req.user_id, req.placement.name,
                        req.channel, tuple(ranked), matched, traces, held_out, policy,
                        best_send_at=_send_at(req, facts))
    return decision, _record(decision, req, features, experiment)


def _send_at(req: DecideInput, facts: Facts) -> float | None:
    """On email, when to send (engine.decide.send_time); else None."""
    if req.channel != "email":
        return None
    send: SendTime = facts.attributes[SEND_TIME_ATTRIBUTE]
    return send.best_at(req.now)


def _record(decision: Decision, req: DecideInput, features: dict[str, float],
            experiment: Experiment | None) -> DecisionRecord:
    """What is stored of a decision, for its feedback and the learning log."""
    return DecisionRecord(
        decision_id=decision.decision_id, user_id=req.user_id, placement=req.placement.name,
        channel=req.channel, revision=decision.revision, decided_at=req.now,
        actions=[_shown(a, experiment) for a in decision.actions], features=features,
        holdout=decision.holdout)


def _experiment_for(ruleset: Ruleset, req: DecideInput) -> Experiment | None:
    """The placement's experiment, unless its traffic or layer leaves this customer out;
    one that has ended (``winner:``) is everyone's: its other arms are retired for all."""
    experiment = ruleset.experiment_by_placement.get(req.placement.name)
    if experiment is not None and experiment.winner is None and not takes_part(
            ruleset, experiment, req.user_id):
        return None  # the arms are plain actions for this customer
    return experiment


def _allocate(experiment: Experiment | None, candidates: list[RankedAction], req: DecideInput,
              learnt: Learnt, scorer: Scorer, tracer: Tracer) -> Allocated:
    """The experiment's choice among its arms; the arms it did not play are dropped."""
    if experiment is None:
        return Allocated(candidates, [])
    if experiment.winner is not None:
        allocated = promote_winner(experiment, candidates, tracer)
    elif experiment.weights:
        allocated = allocate_fixed(experiment, candidates, req.user_id, tracer)
    else:
        allocated = allocate_thompson(
            experiment, candidates, learnt.experiment_state(experiment), learnt.sampler,
            scorer, linear=req.placement.rank is None, tracer=tracer)
    if tracer.enabled:
        for arm in allocated.dropped:
            tracer.dropped(arm.action_id)
    return allocated


def _hold_out(experiment: Experiment | None, candidates: list[RankedAction], tracer: Tracer
              ) -> Allocated:
    """A holdout customer gets no personalisation at all: every candidate goes."""
    if tracer.enabled:
        for a in candidates:
            tracer.check(a.action_id, Reason(
                ReasonKind.EXPERIMENT, experiment.name if experiment else "", False,
                "customer is in the holdout: no personalised action"))
            tracer.dropped(a.action_id)
    return Allocated([], candidates)


def _choose(ruleset: Ruleset, req: DecideInput, facts: Facts, allocated: Allocated,
            scored: Candidates, experiment: Experiment | None, holdout: bool, tracer: Tracer
            ) -> tuple[list[RankedAction], dict[str, float]]:
    """The actions shown, and the policy's first-slot distribution."""
    candidates = allocated.kept
    ranked = rank(candidates, req.limit, tracer)
    if ranked:
        policy = _policy(allocated, scored, ranked)
        ranked[0].probability = policy.get(ranked[0].action_id, 0.0)
        return ranked, policy
    if req.placement.fallback is None:
        return [], {}
    fallback = fallback_action(ruleset, req.placement.fallback, facts, tracer)
    if holdout and experiment is not None:  # the holdout's outcomes, for measuring lift
        fallback.experiment, fallback.arm = experiment.name, HOLDOUT_ARM
    return [fallback], {fallback.action_id: 1.0}


def _policy(allocated: Allocated, scored: Candidates, ranked: list[RankedAction]
            ) -> dict[str, float]:
    """The first-slot distribution; for an experiment, remembered by the experiment's
    state under what it depends on (the arms' values, the other candidates' scores)."""
    member_scores = scored.member_scores
    if allocated.allocation is None and member_scores is None:
        return {ranked[0].action_id: 1.0}
    if allocated.memo is None or member_scores is not None:
        return top_distribution(allocated.kept, allocated.allocation, member_scores)
    key = ("top", allocated.key,
           tuple((c.action_id, c.score, c.priority) for c in allocated.kept if c.arm is None))
    memo = allocated.memo
    policy = memo.get(key)
    if policy is None:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        policy = memo[key] = top_distribution(allocated.kept, allocated.allocation, None)
    return dict(policy)


def _shown(a: RankedAction, experiment: Experiment | None) -> ShownAction:
    arm = experiment is not None and a.experiment is not None
    return ShownAction(
        a.action_id, a.rank, a.score, a.propensity, a.value, a.experiment, a.arm,
        reward=experiment.reward if arm and experiment else None,
        reward_value=bool(arm and experiment and experiment.reward_value),
        windowed=bool(arm and experiment and experiment.windowed),
        probability=a.probability, items=[item.item_id for item in a.items])
