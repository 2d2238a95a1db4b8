"""Feedback → its effects: contact history, bandit counts, a learning event. Pure.

Counting rules (docs/README "Feedback"):

* Each outcome kind counts once per decision and action: a second click on the
  same shown action changes nothing (the bandit is Bernoulli per impression).
* An impression is one bandit trial. A reward outcome (the experiment's
  ``reward``, click by default) is one success; if no impression was reported for
  that decision-action first, the reward implies one and counts the trial too.
* Every outcome is appended to the profile's contact history (frequency caps).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsl.vocabulary import REWARD_OUTCOMES
from engine.experiments.windows import counter_keys
from engine.ports import FeedbackEffects
from engine.profiles import record_contact
from engine.records import ArmCounts, DecisionRecord, LearningEvent, Profile
from engine.requests import InvalidArgument


class ActionNotInDecision(LookupError):
    """The action id was not among the decision's ranked actions."""


@dataclass(frozen=True)
class FeedbackInput:
    decision_id: str
    action_id: str
    outcome: str  # impression | click | conversion | dismiss
    value: float | None
    idempotency_key: str
    at: float
    received_at: float

    @property
    def key(self) -> str:
        return self.idempotency_key or f"{self.decision_id}:{self.action_id}:{self.outcome}"


def feedback_effects(
    fb: FeedbackInput, decision: DecisionRecord, profile: Profile | None
) -> FeedbackEffects:
    """What one outcome changes. Raises :class:`ActionNotInDecision`."""
    shown = decision.shown(fb.action_id)
    if shown is None:
        raise ActionNotInDecision(fb.action_id)
    seen = decision.outcomes.setdefault(fb.action_id, [])
    first = fb.outcome not in seen
    shown_now = "impression" not in seen  # this outcome is the first sign it was shown
    rewarded = fb.outcome in REWARD_OUTCOMES and not any(o in REWARD_OUTCOMES for o in seen)
    # any other outcome means the action was seen, even if no impression was reported
    implied_impression = fb.outcome != "impression" and "impression" not in seen
    increments: dict[tuple[str, str], ArmCounts] = {}
    if first and shown.experiment and shown.arm:
        reward = 0.0
        if fb.outcome == shown.reward:
            if shown.reward_value and fb.value is None:
                raise InvalidArgument("value", f"is required: experiment {shown.experiment} "
                                               f"is rewarded by the {fb.outcome}'s value")
            reward = float(fb.value) if shown.reward_value and fb.value is not None else 1.0
        delta = ArmCounts(
            trials=1.0 if fb.outcome == "impression" or implied_impression else 0.0,
            successes=reward,
            sum_sq=reward * reward if shown.reward_value else 0.0,
        )
        if delta.trials or delta.successes:
            for key in counter_keys(shown.arm, decision.decided_at, shown.windowed):
                increments[(shown.experiment, key)] = delta
    if implied_impression:
        seen.append("impression")
        profile = record_contact(profile, decision.user_id, fb.action_id, "impression", fb.at,
                                 decision.channel)
    if first:
        seen.append(fb.outcome)
    profile = record_contact(profile, decision.user_id, fb.action_id, fb.outcome, fb.at,
                             decision.channel)
    event = LearningEvent(
        decision_id=fb.decision_id,
        action_id=fb.action_id,
        outcome=fb.outcome,
        at=fb.at,
        received_at=fb.received_at,
        features=decision.features,
        value=fb.value,
        first=first,
        placement=decision.placement,
        shown=shown_now,
        rewarded=rewarded,
    )
    return FeedbackEffects(decision, profile, event, increments)
