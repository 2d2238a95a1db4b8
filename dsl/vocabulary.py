"""The words Arbiter's parts share: outcomes, reason kinds, learners and defaults.

Written once here so the checker, the engine and the docs cannot drift apart.

>>> REWARD_OUTCOMES
('click', 'conversion')
>>> ReasonKind.CAP == "cap"
True
"""

from __future__ import annotations

from enum import StrEnum

OUTCOMES = ("impression", "click", "conversion", "dismiss")
"""Every outcome ``Feedback`` accepts."""
REWARD_OUTCOMES = ("click", "conversion")
"""Outcomes that reward an action: an experiment's ``reward``, a model's positive label."""
NEGATIVE_OUTCOMES = ("dismiss",)
"""Outcomes that are an explicit negative label."""

DEFAULT_PRIOR = 0.05
"""An action's propensity before its model has learnt anything (``prior:``)."""
DEFAULT_REWARD_WAIT_SECONDS = 1800.0
"""An impression without a reward after this long is a negative example (Azure
Personalizer's reward wait)."""
ATTRIBUTION_WINDOW_SECONDS = 7 * 86400.0
"""How long a decision can receive feedback (its record's time to live; ``arbiter serve
--attribution-window``)."""

EVENT_RETENTION_SECONDS = 90 * 86400.0
"""How far back a profile keeps each event type's timestamps: the longest ``within``
window a rule may use (all-time counts, totals, first and last stay exact)."""

MAX_EVENT_TYPES = 256
"""Event types a profile keeps (a ruleset that declares ``events:`` accepts only those,
at most this many; one that does not accepts any name): the one seen least recently
makes room."""
CONTACT_RETENTION_SECONDS = 366 * 86400.0
"""How far back a profile keeps an action's contacts (impressions, clicks, ...): the
longest window a cap, cooldown, suppression or policy may use."""
MAX_CONTACTS_PER_ACTION = 200
"""The newest contacts a profile keeps per action: the most a cap or a suppression may
count."""

LEARNERS = ("logistic", "adpredictor", "tree")
"""``learner:`` values of a ``model`` block (each has a factory in engine.learning.registry)."""
MODEL_PER = ("action", "placement")
MODEL_VOCABULARY = 1000
"""Values of one one-hot feature that a model gives weights of their own unless its
``vocabulary:`` says otherwise (engine.learning.vocabulary); later values share one."""
MAX_MODEL_VOCABULARY = 100_000
"""The most ``vocabulary:`` may allow (a weight per value, in every bag member, in every
snapshot)."""
FEATURE_TYPES = ("number", "bool", "string", "list")
"""Attribute types a model can use as features."""

HOLDOUT_ARM = "holdout"
"""The pseudo-arm under which a holdout's fallback action is counted (its outcomes)."""


class ReasonKind(StrEnum):
    """What a reason in an explanation is about (its ``kind`` over gRPC)."""

    SEGMENT = "segment"  # a segment the action's condition uses, matched or not
    ELIGIBILITY = "eligibility"  # channel, validity window, when, unless, value
    CONSENT = "consent"  # the purposes the action needs
    CAP = "cap"  # frequency cap, cooldown, suppression, group and channel caps
    EXPERIMENT = "experiment"  # allocation: Thompson, fixed split, winner, holdout
    SCORE = "score"  # the arbitration formula and the rank cut
    FALLBACK = "fallback"  # the placement's fallback, shown when nothing was eligible
    RECOMMENDATION = "recommendation"  # an item recommend() chose, with its source and score


ELIGIBILITY_KINDS = frozenset({ReasonKind.ELIGIBILITY, ReasonKind.CONSENT, ReasonKind.CAP})
"""Reasons that decide whether an action may be shown at all."""

SEND_TIME_ATTRIBUTE = "@send_time"
"""Where a decision's facts carry the customer's send-time facts (``best_send_hour()``):
an attribute key no rule can write, since ``@`` is not part of a name."""

POPULATION_ATTRIBUTE = "@population"
"""Where a decision's facts carry the population statistics ``percentile()`` reads."""

CLUSTERS_ATTRIBUTE = "@clusters"
"""Where a decision's facts carry the customer's learned clusters (``cluster.NAME``)."""
