"""Feedback → its effects: contact history, bandit counts, a learning event. Pure.

Counting rules (docs/README "Feedback"):

* Each outcome kind counts once per decision and action: a second click on the
  same shown action changes nothing (the bandit is Bernoulli per impression).
* An impression is one bandit trial. A reward outcome (the experiment's
  ``reward``, click by default) is one success; if no impression was reported for
  that decision-action first, the reward implies one and counts the trial too.
* The first outcome of each kind (and an implied impression) is appended to the
  profile's contact history, so caps, cooldowns and suppressions count what the
  bandit and the models count: a repeated outcome, under any idempotency key, is
  acknowledged and changes nothing.
* Time: a feedback timestamped before its decision is rejected; the attribution
  window runs from the decision's own time (its ``at``), not from when it was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dsl.vocabulary import REWARD_OUTCOMES
from engine.experiments.windows import counter_keys
from engine.ports import DecisionNotFound, FeedbackEffects
from engine.profiles import PACKED, record_contact, record_item
from engine.records import (
    ArmCounts,
    DecisionRecord,
    LearningEvent,
    Profile,
    ShownAction,
    pseudonym,
)
from engine.requests import InvalidArgument

CLOCK_SKEW_SECONDS = 5.0
"""A feedback timestamp may precede its decision by this much (clocks of other hosts)."""


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
    window: float = float("inf")  # the attribution window, from the decision's time
    # placements whose decisions take feedback for another time than ``window``
    windows: Mapping[str, float] = field(default_factory=dict)
    item_id: str = ""  # a recommended item of the action the outcome is about

    @property
    def key(self) -> str:
        """The idempotency key, scoped to its decision: the same key on another decision
        is another request. Without a key: one per decision, action and outcome.

        >>> FeedbackInput("d1", "a", "click", None, "order-7", 0.0, 0.0).key
        'd1|k|order-7'
        >>> FeedbackInput("d1", "a", "click", None, "", 0.0, 0.0).key
        'd1|d|a|click'
        """
        if self.idempotency_key:
            return f"{self.decision_id}|k|{self.idempotency_key}"
        item = f"|i|{self.item_id}" if self.item_id else ""
        return f"{self.decision_id}|d|{self.action_id}|{self.outcome}{item}"

    @property
    def fingerprint(self) -> str:
        """What a replay under the same key must repeat (timestamps aside, which a retry
        may legitimately re-stamp): the action, the outcome and the value."""
        item = f"\x1f{self.item_id}" if self.item_id else ""
        return f"{self.action_id}\x1f{self.outcome}\x1f{self.value!r}{item}"


def implied_key(key: str) -> str | None:
    """The outcome of a :attr:`FeedbackInput.key` the server made (no key was sent),
    None for a client's own key.

    >>> implied_key("d1|d|a|click"), implied_key("d1|k|order-7")
    ('click', None)
    """
    parts = key.split("|", 4)
    return parts[3] if len(parts) >= 4 and parts[1] == "d" else None


def feedback_effects(
    fb: FeedbackInput, decision: DecisionRecord, profile: Profile | None,
    layout: str = PACKED,
) -> FeedbackEffects:
    """What one outcome changes (the contact history written in ``layout``, one of
    :data:`engine.profiles.PROFILE_LAYOUTS`). Raises :class:`ActionNotInDecision`,
    ``DecisionNotFound`` (past the attribution window, counted from the decision's time)
    or ``InvalidArgument`` (a timestamp before the decision, a value reward without its
    value)."""
    shown = decision.shown(fb.action_id)
    if shown is None:
        raise ActionNotInDecision(fb.action_id)
    if fb.received_at - decision.decided_at > fb.windows.get(decision.placement, fb.window):
        raise DecisionNotFound(fb.decision_id)
    if fb.at < decision.decided_at - CLOCK_SKEW_SECONDS:
        raise InvalidArgument("timestamp", "is before the decision it reports on")
    if fb.item_id and fb.item_id not in shown.items:
        raise InvalidArgument("item_id", f"'{fb.item_id}' was not recommended with action "
                                         f"{fb.action_id} in this decision")
    seen = decision.outcomes.setdefault(fb.action_id, [])
    first = fb.outcome not in seen
    # any other outcome means the action was seen, even if no impression was reported
    implied_impression = fb.outcome != "impression" and "impression" not in seen
    event = LearningEvent(
        decision_id=fb.decision_id, action_id=fb.action_id, outcome=fb.outcome, at=fb.at,
        received_at=fb.received_at, features=decision.features, value=fb.value, first=first,
        placement=decision.placement,
        shown="impression" not in seen,  # the first sign it was shown: a (fake) negative
        rewarded=fb.outcome in REWARD_OUTCOMES and not any(o in REWARD_OUTCOMES for o in seen))
    increments = _arm_increments(fb, decision, shown, implied_impression) if first else {}
    changed: Profile | None = None  # the profile is written only when a contact counts
    if implied_impression:
        seen.append("impression")
        changed = record_contact(profile, decision.user_id, fb.action_id, "impression", fb.at,
                                 decision.channel, layout)
    if first:
        seen.append(fb.outcome)
        changed = record_contact(changed or profile, decision.user_id, fb.action_id,
                                 fb.outcome, fb.at, decision.channel, layout)
    if fb.item_id and fb.outcome != "impression":  # an interaction with the item
        changed = changed or profile or Profile(user_id=decision.user_id)
        event.history = tuple(record_item(changed, fb.item_id, fb.outcome, fb.at))
        event.user, event.item_id = pseudonym(decision.user_id), fb.item_id
    return FeedbackEffects(decision, changed, event, increments)


def _arm_increments(fb: FeedbackInput, decision: DecisionRecord, shown: ShownAction,
                    implied_impression: bool) -> dict[tuple[str, str], ArmCounts]:
    """The bandit counters a first outcome of this kind moves: a trial, a reward."""
    if not (shown.experiment and shown.arm):
        return {}
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
    if not (delta.trials or delta.successes):
        return {}
    return {(shown.experiment, key): delta
            for key in counter_keys(shown.arm, decision.decided_at, shown.windowed)}
