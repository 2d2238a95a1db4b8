"""The Decide pipeline, one small function per stage, no I/O.

profile → facts → segments → candidates (placement, channel) → eligibility →
frequency caps → score (propensity * value * weight) → experiment (Thompson
sampling among its eligible arms) → rank → render content → decision record.

The service (:mod:`engine.service`) loads the profile before and stores the
record after; everything here is computation on in-memory values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsl.ruleset import Action, Experiment, ModelSpec, Placement, Ruleset
from dsl.schema import FieldSpec
from dsl.vocabulary import HOLDOUT_ARM
from engine.decide.decision import ActionTrace, Decision, RankedAction, Reason
from engine.experiments.bucketing import fixed_arm, in_holdout, takes_part
from engine.experiments.posteriors import BetaPosterior, Posterior
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.state import ExperimentState
from engine.learning.models import PropensityModels
from engine.profiles import impressions_within, last_contact, outcomes_within
from engine.records import DecisionRecord, Profile, ShownAction
from engine.requests import DecideInput

log = logging.getLogger(__name__)

CUSTOM_FORMULA_ROWS = 64
"""Posterior rows a custom ``rank:`` formula is evaluated on per Thompson decision."""

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "number": (float, int),
    "string": (str,),
    "bool": (bool,),
    "timestamp": (float, int),
    "list": (list,),
    "map": (dict,),
}


@dataclass(slots=True)
class Facts:
    """The values rules read: the arguments of every compiled function."""

    attributes: dict[str, Any]
    context: dict[str, Any]
    events: Mapping[str, Any]
    segments: dict[str, bool]
    now: float

    def args(self) -> tuple[Any, ...]:
        return (self.attributes, self.context, self.events, self.segments, self.now)


def _typed(schema: Mapping[str, FieldSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """Stored attributes whose type matches the schema; others read as missing."""
    out = {}
    for name, value in values.items():
        spec = schema.get(name)
        if spec is None:
            continue
        kinds = _PY_TYPES[spec.type]
        if isinstance(value, kinds) and not (spec.type != "bool" and isinstance(value, bool)):
            out[name] = value
    return out


def build_facts(ruleset: Ruleset, profile: Profile | None, req: DecideInput) -> Facts:
    attributes = dict(ruleset.attribute_defaults)
    if profile is not None:
        attributes.update(_typed(ruleset.profile_schema, profile.attributes))
    attributes["user_id"] = req.user_id
    attributes["known"] = profile is not None
    attributes["first_seen"] = profile.first_seen if profile else None
    attributes["last_seen"] = profile.last_seen if profile else None
    context = dict(ruleset.context_defaults)
    context.update(req.context)
    context["placement"] = req.placement.name
    context["channel"] = req.channel
    events = profile.events if profile is not None else {}
    return Facts(attributes, context, events, {}, req.now)


def evaluate_segments(ruleset: Ruleset, facts: Facts) -> None:
    """Each segment once, in dependency order.

    A customer is in a segment or not: a condition that is null (missing data) or
    fails to evaluate means "not in it", so segments are plain booleans wherever
    other rules use them (the checker types them so, and ``not`` relies on it).
    """
    args = facts.args()
    segments = facts.segments
    for segment in ruleset.segments:
        try:
            segments[segment.name] = segment.fn(*args) is True
        except Exception:  # a bug or bad stored data: never crash, never match
            log.exception("segment %s failed at %s", segment.name, segment.pos)
            segments[segment.name] = False


def features_of(facts: Facts, spec: ModelSpec) -> dict[str, float]:
    """Model features: numbers as they are, bools and segments 0/1, strings and lists one-hot.

    One-hot features are named ``name=value`` and present only when true; every
    other feature is always present.

    The default model (no ``features:``) reads every segment flag and context value.
    """
    if spec.features is None:
        features = {f"segment:{name}": 1.0 if hit else 0.0
                    for name, hit in facts.segments.items()}
        for key, value in facts.context.items():
            _encode(features, f"context.{key}", value)
        return features
    features = {}
    for name in spec.features:
        if name == "segments":
            features.update({f"segment:{s}": 1.0 if hit else 0.0
                             for s, hit in facts.segments.items()})
            continue
        head, _, attr = name.partition(".")
        source = facts.attributes if head == "profile" else facts.context
        _encode(features, name, source.get(attr))
    return features


def _encode(features: dict[str, float], name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        features[name] = 1.0 if value else 0.0
    elif isinstance(value, int | float):
        features[name] = float(value)
    elif isinstance(value, list):
        for item in value:
            features[f"{name}={item}"] = 1.0
    else:
        features[f"{name}={value}"] = 1.0


def _location(action: Action) -> str:
    return str(action.pos)


def contact_policies_allow(ruleset: Ruleset, action: Action, req: DecideInput,
                           profile: Profile | None, reasons: list[Reason],
                           explain: bool) -> bool:
    """The action's cap, cooldown and suppression, its group's cap, the channel's cap.

    All are counted from the profile's contact history (outcomes reported with
    Feedback); every check that applies adds a reason when explaining.
    """
    now = req.now
    checks: list[tuple[str, bool, str, str]] = []
    if action.cap is not None:
        shown = impressions_within(profile, action.id, now, action.cap.window_seconds)
        checks.append(("frequency", shown < action.cap.limit,
                       f"{shown} impressions, {action.cap.text}", str(action.cap.pos)))
    if action.cooldown is not None:
        last = last_contact(profile, action.id)
        ok = last is None or now - last >= action.cooldown.window_seconds
        since = "never shown" if last is None else f"last shown {(now - last) / 3600:.1f}h ago"
        checks.append(("cooldown", ok, f"{since}, cooldown {action.cooldown.text}",
                       str(action.cooldown.pos)))
    if action.suppress is not None:
        rule = action.suppress
        seen = outcomes_within(profile, (action.id,), now, rule.window_seconds, rule.outcome)
        checks.append(("suppress", seen < rule.count, f"{seen} {rule.outcome}(s), {rule.text}",
                       str(rule.pos)))
    group_cap = ruleset.group_caps.get(action.group) if action.group else None
    if group_cap is not None and action.group is not None:
        shown = outcomes_within(profile, ruleset.groups[action.group], now,
                                group_cap.window_seconds)
        checks.append((f"group {action.group}", shown < group_cap.limit,
                       f"{shown} impressions in the group, {group_cap.text}",
                       str(group_cap.pos)))
    channel_cap = ruleset.channel_caps.get(req.channel)
    if channel_cap is not None:
        shown = outcomes_within(profile, profile.contacts if profile else (), now,
                                channel_cap.window_seconds, channel=req.channel)
        checks.append((f"channel {req.channel}", shown < channel_cap.limit,
                       f"{shown} impressions on {req.channel}, {channel_cap.text}",
                       str(channel_cap.pos)))
    allowed = True
    for name, ok, detail, location in checks:
        if explain:
            reasons.append(Reason("cap", name, ok, detail, location))
        allowed = allowed and ok
        if not ok and not explain:
            return False
    return allowed


def _condition(fn: Callable[..., Any], args: tuple[Any, ...], action: Action,
               what: str) -> bool | None:
    """A condition's value; a failure (a bug or bad data) is logged and counts as unknown."""
    try:
        result: bool | None = fn(*args)
    except Exception:
        log.exception("'%s' of %s failed", what, action.id)
        return None
    return result


def check_eligibility(
    ruleset: Ruleset, action: Action, req: DecideInput, facts: Facts, profile: Profile | None,
    explain: bool,
) -> tuple[float | None, list[Reason]]:
    """The action's value if it may be shown, else None; reasons when explaining."""
    reasons: list[Reason] = []
    if action.channels is not None and req.channel not in action.channels:
        if explain:
            reasons.append(Reason("eligibility", "channel", False,
                                  f"{req.channel} not in {', '.join(sorted(action.channels))}"))
        return None, reasons
    if (action.starts is not None and req.now < action.starts) or (
            action.ends is not None and req.now >= action.ends):
        if explain:
            reasons.append(Reason("eligibility", "validity", False,
                                  "outside its starts/ends window", str(action.pos)))
        return None, reasons
    if action.consent:
        given = facts.attributes.get("consents") or ()
        missing = [purpose for purpose in action.consent if purpose not in given]
        if explain:
            reasons.append(Reason("consent", ", ".join(action.consent), not missing,
                                  f"missing consent: {', '.join(missing)}" if missing
                                  else "given", str(action.pos)))
        if missing:
            return None, reasons
    args = facts.args()
    if action.when is not None:
        held = _condition(action.when, args, action, "when")
        if explain:
            detail = action.when_source
            segs = ", ".join(f"{s}={facts.segments.get(s)}" for s in action.segments)
            if segs:
                detail += f"  [{segs}]"
            reasons.append(Reason("eligibility", "when", held is True,
                                  f"{detail} -> {held if held is not None else 'unknown'}",
                                  str(action.when_pos)))
        if held is not True:
            return None, reasons
    if action.unless is not None:
        blocked = _condition(action.unless, args, action, "unless")
        if explain:
            reasons.append(Reason("eligibility", "unless", blocked is False,
                                  f"{action.unless_source} -> "
                                  f"{blocked if blocked is not None else 'unknown'}",
                                  str(action.unless_pos)))
        if blocked is not False:  # unknown blocks too: never show on missing data
            return None, reasons
    try:
        value = action.value(*args)
    except Exception:
        log.exception("value of %s failed", action.id)
        value = None
    if value is None:
        if explain:
            reasons.append(Reason("eligibility", "value", False, "value is unknown (null)",
                                  _location(action)))
        return None, reasons
    if not contact_policies_allow(ruleset, action, req, profile, reasons, explain):
        return None, reasons
    return float(value), reasons


Scorer = Callable[[RankedAction, float], float]


def scorer_for(ruleset: Ruleset, placement: Placement, facts: Facts) -> Scorer:
    """The placement's arbitration formula: a candidate's score at a given propensity.

    Without a ``rank:`` formula it is ``propensity * value * weight``. A formula that
    is null or fails scores 0 (logged), so it can never raise a decision.
    """
    formula = placement.rank
    if formula is None:
        return lambda c, propensity: propensity * c.value * c.weight
    args = facts.args()

    def score(candidate: RankedAction, propensity: float) -> float:
        action = ruleset.actions[candidate.action_id]
        try:
            result = formula(*args, action.fields(candidate.value, propensity))
        except Exception:
            log.exception("rank formula of %s failed for %s", placement.name, action.id)
            return 0.0
        return float(result) if result is not None else 0.0

    return score


def score(action: Action, value: float, propensity: float, reasons: list[Reason],
          explain: bool, scorer: Scorer) -> RankedAction:
    ranked = RankedAction(action.id, 0.0, propensity, value, action.weight, action.priority,
                          reasons=reasons, tags=action.tags)
    ranked.score = scorer(ranked, propensity)
    if explain:
        ranked.score_terms = {"propensity": propensity, "value": value, "weight": action.weight}
    return ranked


@dataclass(slots=True)
class Allocation:
    """How an experiment chose among its eligible arms: its equally likely (Thompson: one
    per row of posterior draws) or weighted (fixed split: one per arm) outcomes.

    Per outcome: ``winners`` the index into ``arms`` of the arm kept (-1: none),
    ``scores`` its score (NaN: the arm's own model score), ``weights`` its probability.
    """

    arms: list[RankedAction]
    winners: np.ndarray
    scores: np.ndarray
    weights: np.ndarray


def allocate_experiment(
    experiment: Experiment,
    candidates: list[RankedAction],
    state: ExperimentState,
    sampler: ThompsonSampler,
    explain: bool,
    scorer: Scorer,
    linear: bool,
) -> tuple[list[RankedAction], list[RankedAction], Allocation | None]:
    """Thompson sampling among the eligible arms; returns (kept, dropped arms, allocation).

    A row of the experiment's posterior draws is picked at random; the arm whose
    score with its sampled mean as the propensity is largest (``sample * value *
    weight`` by default) is played with the sample as its propensity, the other
    arms drop out. ``linear`` says the score is that default product, so every row
    is scored at once; a custom ``rank:`` formula is called per row on the first
    :data:`CUSTOM_FORMULA_ROWS` rows only.
    """
    arms = [c for c in candidates if c.action_id in experiment.arms]
    if not arms:
        return candidates, [], None
    columns = [experiment.arms.index(a.action_id) for a in arms]
    draws = state.draws[:, columns]
    if linear:
        scores = draws * np.array([a.value * a.weight for a in arms])
    else:
        draws = draws[:CUSTOM_FORMULA_ROWS]
        scores = np.array([[scorer(arm, float(x)) for arm, x in zip(arms, row, strict=True)]
                           for row in draws])
    row = int(sampler.integers(len(draws)))
    best = int(np.argmax(scores[row]))
    chosen = arms[best]
    model_propensity = chosen.propensity
    chosen.propensity = float(draws[row, best])
    chosen.score = float(scores[row, best])
    chosen.experiment, chosen.arm = experiment.name, chosen.action_id
    winners = np.argmax(scores, axis=1)
    top_scores = scores[np.arange(len(scores)), winners]
    allocation = Allocation(arms, winners, top_scores, np.full(len(scores), 1.0 / len(scores)))
    if explain:
        posterior = state.posteriors[columns[best]]
        shares = np.bincount(winners, minlength=len(arms)) / len(scores)
        chosen.score_terms.update({
            "propensity": chosen.propensity,
            "thompson_sample": chosen.propensity,
            "posterior_mean": posterior.mean,
            "model_propensity": model_propensity,
            "allocation": float(shares[best]),
        })
        if isinstance(posterior, BetaPosterior):
            chosen.score_terms["posterior_alpha"] = posterior.alpha
            chosen.score_terms["posterior_beta"] = posterior.beta
        chosen.reasons.append(Reason(
            "experiment", experiment.name, True,
            f"arm {chosen.action_id} sampled {chosen.propensity:.4f} from "
            f"{_describe(posterior)}; wins {shares[best]:.0%} of posterior draws among "
            f"{len(arms)} eligible arm(s)", str(experiment.pos)))
        for i, arm in enumerate(arms):
            if arm is not chosen:
                arm.reasons.append(Reason(
                    "experiment", experiment.name, False,
                    f"arm not played: sampled {float(draws[row, i]):.4f} from "
                    f"{_describe(state.posteriors[columns[i]])}; wins {shares[i]:.0%} of "
                    "posterior draws", str(experiment.pos)))
    dropped = [a for a in arms if a is not chosen]
    return [c for c in candidates if c not in dropped], dropped, allocation


def _describe(posterior: Posterior) -> str:
    if isinstance(posterior, BetaPosterior):
        return f"Beta({posterior.alpha:g}, {posterior.beta:g})"
    return (f"NormalGamma(mu={posterior.mu:.4g}, kappa={posterior.kappa:g}, "
            f"alpha={posterior.alpha:g}, beta={posterior.beta:.4g})")


def top_distribution(kept: list[RankedAction], allocation: Allocation | None,
                     member_scores: list[dict[str, float]] | None) -> dict[str, float]:
    """P(each action is in the first slot | this request), over the policy's random choices.

    Two things are random: which arm an experiment keeps, at what score
    (``allocation``), and which bag member scored the plain actions
    (``member_scores``, one score map per member, equally likely). Everything else
    is fixed, so the distribution is an exact average over those outcomes; the
    experiment's outcomes are scored at once with NumPy.
    """
    others = [c for c in kept if c.arm is None]
    scenarios: list[dict[str, float] | None] = (
        list(member_scores) if member_scores is not None else [None])
    share = 1.0 / len(scenarios)
    dist: dict[str, float] = {}

    def add(action_id: str, p: float) -> None:
        if p > 0:
            dist[action_id] = dist.get(action_id, 0.0) + p

    for scores in scenarios:
        def score_of(c: RankedAction, scores: dict[str, float] | None = scores) -> float:
            return scores.get(c.action_id, c.score) if scores is not None else c.score

        best = min(others, key=lambda o: (-score_of(o), -o.priority, o.action_id),
                   default=None)
        if allocation is None:
            if best is not None:
                add(best.action_id, share)
            continue
        winners, weights = allocation.winners, allocation.weights
        kept_arm = winners >= 0
        if allocation.arms:
            own = np.array([score_of(a) for a in allocation.arms])
            arm_scores = np.where(np.isnan(allocation.scores), own[winners], allocation.scores)
        else:
            arm_scores = np.full(len(winners), -np.inf)
        if best is None:
            arm_wins = kept_arm
        else:
            threshold = score_of(best)
            ties_won = np.array([(-a.priority, a.action_id) < (-best.priority, best.action_id)
                                 for a in allocation.arms] or [False])
            arm_wins = kept_arm & ((arm_scores > threshold) | (
                (arm_scores == threshold) & ties_won[np.maximum(winners, 0)]))
            add(best.action_id, share * float(weights[~arm_wins].sum()))
        for j, arm in enumerate(allocation.arms):
            add(arm.action_id, share * float(weights[arm_wins & (winners == j)].sum()))
    return dist


def fallback_action(ruleset: Ruleset, action_id: str, facts: Facts,
                    explain: bool) -> RankedAction:
    """The placement's fallback, shown when nothing is eligible: score 0, rank 1."""
    action = ruleset.actions[action_id]
    try:
        value = float(action.value(*facts.args()) or 0.0)
    except Exception:
        log.exception("value of fallback %s failed", action.id)
        value = 0.0
    ranked = RankedAction(action.id, 0.0, 0.0, value, action.weight, action.priority, rank=1,
                          tags=action.tags)
    if explain:
        ranked.reasons.append(Reason("fallback", action.id, True,
                                     "no action was eligible: the placement's fallback",
                                     str(action.pos)))
    return ranked


def allocate_fixed(experiment: Experiment, candidates: list[RankedAction], user_id: str,
                   explain: bool
                   ) -> tuple[list[RankedAction], list[RankedAction], Allocation | None]:
    """A fixed split (A/B/n): the customer's bucket picks the arm, sticky across calls.

    If the assigned arm is not eligible for this customer now, no arm is shown (the
    others must not stand in for it, or the split would be biased). Over customers
    the assignment is random with the arms' shares, which is the probability that
    off-policy evaluation needs.
    """
    arm = fixed_arm(experiment, user_id)
    arms = [c for c in candidates if c.action_id in experiment.arms]
    chosen = next((c for c in arms if c.action_id == arm), None)
    if chosen is not None:
        chosen.experiment, chosen.arm = experiment.name, arm
    total = sum(experiment.weights)
    index = {c.action_id: i for i, c in enumerate(arms)}
    allocation = Allocation(
        arms, np.array([index.get(a, -1) for a in experiment.arms]),
        np.full(len(experiment.arms), np.nan), np.array(experiment.weights) / total)
    if explain:
        share = experiment.weights[experiment.arms.index(arm)] / total
        for c in arms:
            played = c is chosen
            c.reasons.append(Reason(
                "experiment", experiment.name, played,
                f"fixed split assigns arm {arm} ({share:.0%} of customers)"
                + ("" if played else "; this arm is not played"), str(experiment.pos)))
    dropped = [c for c in arms if c is not chosen]
    return [c for c in candidates if c not in dropped], dropped, allocation


def promote_winner(experiment: Experiment, candidates: list[RankedAction], explain: bool
                   ) -> tuple[list[RankedAction], list[RankedAction]]:
    """``winner: arm``: the experiment is over, its winner is a plain action, the others go."""
    dropped = [c for c in candidates
               if c.action_id in experiment.arms and c.action_id != experiment.winner]
    if explain:
        for c in candidates:
            if c.action_id in experiment.arms:
                won = c.action_id == experiment.winner
                c.reasons.append(Reason(
                    "experiment", experiment.name, won,
                    f"experiment ended, winner {experiment.winner} promoted"
                    + ("" if won else "; this arm is retired"), str(experiment.pos)))
    return [c for c in candidates if c not in dropped], dropped


def rank(candidates: list[RankedAction], limit: int) -> list[RankedAction]:
    """Highest score first; ties by priority (high first), then action id."""
    ordered = sorted(candidates, key=lambda a: (-a.score, -a.priority, a.action_id))[:limit]
    for i, action in enumerate(ordered, start=1):
        action.rank = i
    return ordered


def render_content(ruleset: Ruleset, ranked: RankedAction, facts: Facts) -> None:
    action = ruleset.actions[ranked.action_id]
    args = (*facts.args(), action.fields(ranked.value, ranked.propensity))
    for name, template in action.content:
        try:
            ranked.content[name] = template.render(args)
        except Exception:
            log.exception("content %s.%s failed", action.id, name)
            ranked.content[name] = ""


def run(
    ruleset: Ruleset,
    req: DecideInput,
    profile: Profile | None,
    *,
    decision_id: str,
    models: PropensityModels,
    experiment_state: Callable[[Experiment], ExperimentState],
    sampler: ThompsonSampler,
) -> tuple[Decision, DecisionRecord]:
    """One decision, from a loaded profile to the record to store."""
    explain = req.explain
    facts = build_facts(ruleset, profile, req)
    evaluate_segments(ruleset, facts)
    spec = ruleset.model_of(req.placement.name)
    features = features_of(facts, spec)
    member = int(sampler.integers(spec.bagging)) if spec.bagging else 0
    bag: dict[str, list[float]] = {}  # bagged: every member's propensity of each candidate
    candidates: list[RankedAction] = []
    traces: list[ActionTrace] = []
    scorer = scorer_for(ruleset, req.placement, facts)
    for action in req.placement.actions:
        value, reasons = check_eligibility(ruleset, action, req, facts, profile, explain)
        if value is None:
            if explain:
                traces.append(ActionTrace(action.id, False, tuple(reasons)))
            continue
        if spec.bagging:
            bag[action.id] = models.predict_bag(action.id, spec, action.prior, features,
                                                req.placement.name)
            propensity = bag[action.id][member]
        else:
            propensity = models.predict(action.id, spec, action.prior, features,
                                        req.placement.name)
        candidates.append(score(action, value, propensity, reasons, explain, scorer))
    member_scores = ([{c.action_id: scorer(c, bag[c.action_id][k]) for c in candidates}
                      for k in range(spec.bagging)] if spec.bagging else None)
    experiment = ruleset.experiment_by_placement.get(req.placement.name)
    if experiment is not None and not takes_part(ruleset, experiment, req.user_id):
        experiment = None  # its layer gave this customer another experiment: plain actions
    holdout = experiment is not None and in_holdout(experiment, req.user_id)
    allocation: Allocation | None = None
    if experiment is not None and not holdout:
        if experiment.winner is not None:
            candidates, dropped = promote_winner(experiment, candidates, explain)
        elif experiment.weights:
            candidates, dropped, allocation = allocate_fixed(
                experiment, candidates, req.user_id, explain)
        else:
            candidates, dropped, allocation = allocate_experiment(
                experiment, candidates, experiment_state(experiment), sampler, explain, scorer,
                linear=req.placement.rank is None)
        if explain:
            traces.extend(ActionTrace(a.action_id, False, tuple(a.reasons)) for a in dropped)
    if holdout:  # no personalisation at all: the placement's fallback, or nothing
        if explain:
            traces.extend(ActionTrace(a.action_id, False, (*a.reasons, Reason(
                "experiment", experiment.name if experiment else "", False,
                "customer is in the holdout: no personalised action")))
                for a in candidates)
        candidates = []
    ranked = rank(candidates, req.limit)
    policy: dict[str, float] = {}
    if ranked:
        stochastic = allocation is not None or member_scores is not None
        policy = (top_distribution(candidates, allocation, member_scores) if stochastic
                  else {ranked[0].action_id: 1.0})
        ranked[0].probability = policy.get(ranked[0].action_id, 0.0)
    elif req.placement.fallback is not None:
        ranked = [fallback_action(ruleset, req.placement.fallback, facts, explain)]
        if holdout and experiment is not None:  # the holdout's outcomes, for measuring lift
            ranked[0].experiment, ranked[0].arm = experiment.name, HOLDOUT_ARM
        policy = {ranked[0].action_id: 1.0}
    for shown_action in ranked:
        render_content(ruleset, shown_action, facts)
    if explain:
        shown = {a.action_id for a in ranked}
        for a in candidates:
            if a.action_id not in shown:
                a.reasons.append(Reason("score", "rank", False,
                                        f"score {a.score:.4f} below the {req.limit} shown"))
            traces.append(ActionTrace(a.action_id, a.action_id in shown,
                                      tuple([*a.reasons, *_score_reasons(a, req.placement)])))
        traces.sort(key=lambda t: (not t.eligible, t.action_id))
    matched = tuple(name for name, hit in facts.segments.items() if hit is True)
    held_out = experiment.name if holdout and experiment is not None else None
    decision = Decision(decision_id, ruleset.revision, req.now, req.user_id,
                        req.placement.name, req.channel, tuple(ranked), matched, tuple(traces),
                        held_out, policy)
    if explain:
        for shown_action in ranked:
            shown_action.reasons = [*_segment_reasons(ruleset, facts, shown_action.action_id),
                                    *shown_action.reasons,
                                    *_score_reasons(shown_action, req.placement)]
    record = DecisionRecord(
        decision_id=decision_id,
        user_id=req.user_id,
        placement=req.placement.name,
        channel=req.channel,
        revision=ruleset.revision,
        decided_at=req.now,
        actions=[_shown(a, experiment) for a in ranked],
        features=features,
        holdout=held_out,
    )
    return decision, record


def _shown(a: RankedAction, experiment: Experiment | None) -> ShownAction:
    arm = experiment is not None and a.experiment is not None
    return ShownAction(
        a.action_id, a.rank, a.score, a.propensity, a.value, a.experiment, a.arm,
        reward=experiment.reward if arm and experiment else None,
        reward_value=bool(arm and experiment and experiment.reward_value),
        windowed=bool(arm and experiment and experiment.windowed),
        probability=a.probability)


def _segment_reasons(ruleset: Ruleset, facts: Facts, action_id: str) -> list[Reason]:
    """The segments an action's condition refers to, matched or not."""
    used = set(ruleset.actions[action_id].segments)
    return [Reason("segment", s.name, facts.segments.get(s.name) is True, s.source, str(s.pos))
            for s in ruleset.segments if s.name in used]


def _score_reasons(action: RankedAction, placement: Placement) -> list[Reason]:
    terms = " x ".join(f"{k} {v:.4g}" for k, v in action.score_terms.items()
                       if k in ("propensity", "value", "weight"))
    if placement.rank_source:
        return [Reason("score", "rank", True,
                       f"{action.score:.4f} = {placement.rank_source}  [{terms}]",
                       str(placement.pos))]
    return [Reason("score", "score", True, f"{action.score:.4f} = {terms}")]
