"""TrackEvent's change to a profile, and the learning-log entry it makes: pure, so a
store may apply it inside its transaction (and run it again on a conflict).

>>> from dsl.loader import load_text
>>> from engine.requests import track_input
>>> rs = load_text("events: view")
>>> plan = TrackPlan(track_input(rs, user_id="u", event_type="view", now=1000.0,
...                              item_id="sku-1"), rs, 1000.0)
>>> profile = plan.change(None)
>>> profile.items, plan.learning(profile).item_id
([(1000.0, 'sku-1', 'view')], 'sku-1')
"""

from __future__ import annotations

from dsl.ruleset import Ruleset
from engine.decide.clusters import logged_features, score_snapshot
from engine.decide.population import statistics
from engine.event_ids import event_digests, remember, seen
from engine.profiles import PACKED, record_event, record_item
from engine.records import LearningEvent, Profile, pseudonym
from engine.requests import FailedPrecondition, TrackInput

CLUSTER_EVERY_SECONDS = 86400.0
"""A customer's cluster and score features are learnt at most once a day (of event time):
they describe customers, not events, so a burst of events counts once."""


class TrackPlan:
    """One checked TrackEvent: :meth:`change` (the profile after it), :meth:`learning` (the
    entry for the learners, or None), and what the last run of them saw."""

    def __init__(self, req: TrackInput, ruleset: Ruleset, received_at: float,
                 layout: str = PACKED) -> None:
        self.req = req
        self.layout = layout  # of the event history (engine.profiles.PROFILE_LAYOUTS)
        self.user_id = req.user_id
        self.ruleset = ruleset
        self.received_at = received_at
        self.keys = tuple(ruleset.population)  # percentile() statistics to move
        self.before: dict[str, float | None] = {}
        self.history: list[str] = []
        self.snapshot = False  # this event takes the customer's daily feature snapshot
        self.labelled = any(spec.event == req.event_type for spec in ruleset.scores.values())
        self.logged = False  # the last run of learning() made an entry
        self.digests = (event_digests(req.event_id, req.event_type, req.value, req.item_id,
                                      req.traits) if req.event_id else None)
        self.duplicate = False  # the last run of change() found the event already applied

    def change(self, profile: Profile | None) -> Profile:
        """The profile after the event (may run again on a conflict: the last run counts);
        the profile as it is when its ``event_id`` was applied before (raises
        FailedPrecondition when that id named another event)."""
        req, ruleset = self.req, self.ruleset
        self.duplicate = False
        if self.digests is not None:
            known = seen(profile, self.digests, self.received_at)
            if known is False:
                raise FailedPrecondition(
                    "event_id: already used for another event of this customer (another "
                    "type, value, item or traits); send a new id for a new event")
            if known and profile is not None:
                self.duplicate = True
                return profile
        self.before = statistics(profile, self.keys)
        profile = record_event(profile, req.user_id, req.event_type, req.value, req.at,
                               req.traits, self.layout)
        self.history = (record_item(profile, req.item_id, req.event_type, req.at)
                        if req.item_id else [])
        last = profile.clustered_at
        self.snapshot = bool(ruleset.clusters or ruleset.scores) and (
            last is None or req.at - last >= CLUSTER_EVERY_SECONDS)
        if self.snapshot:
            profile.clustered_at = req.at
        if self.digests is not None:
            remember(profile, self.digests, self.received_at)
        return profile

    def learning(self, profile: Profile) -> LearningEvent | None:
        """The learning-log entry of the event: an item interaction, the customer's cluster
        and score features (daily), the counts a score's label reads (every such event)."""
        req, ruleset = self.req, self.ruleset
        if self.duplicate:
            self.logged = False
            return None
        features = logged_features(ruleset, profile, req.at) if self.snapshot else {}
        if self.snapshot or self.labelled:
            features.update(score_snapshot(ruleset, profile, req.at))
        self.logged = bool(req.item_id or features)
        if not self.logged:
            return None
        return LearningEvent("", "", req.event_type, req.at, self.received_at,
                             user=pseudonym(req.user_id), item_id=req.item_id,
                             history=tuple(self.history), profile_features=features)
