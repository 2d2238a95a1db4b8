"""Feeds the learning log to the propensity models, in log order, with delayed labels.

A shown action is a positive example when a click or conversion arrives for it,
and a negative one when its impression waited ``reward_wait`` seconds (measured
on the log's own receive times, so every replica labels identically) without
one, or was dismissed. Each decision-action is learnt once. This is the
"reward wait time" of Azure Personalizer: the label is only known after a delay.

State (models, pending impressions, log offset) is snapshotted to the store every
``snapshot_every`` events, so a restarted process loads the snapshot and replays
only the log after it. After each snapshot the log is trimmed below the oldest
offset any live replica (or the snapshot) still needs.
"""

from __future__ import annotations

import logging
import pickle
import threading
import uuid
from collections.abc import Callable

from dsl.ruleset import ModelSpec
from dsl.vocabulary import DEFAULT_REWARD_WAIT_SECONDS, NEGATIVE_OUTCOMES, REWARD_OUTCOMES
from engine.learning.log import LearningLog
from engine.learning.models import PropensityModels
from engine.records import LearningEvent

Key = tuple[str, str]
log = logging.getLogger(__name__)
SpecOf = Callable[[str, str], tuple[ModelSpec, float]]
"""(placement, action id) -> the placement's model spec and the action's prior."""


class Learner:
    def __init__(
        self,
        store: LearningLog,
        models: PropensityModels,
        spec_of: SpecOf,
        reward_wait: float = DEFAULT_REWARD_WAIT_SECONDS,
        snapshot_every: int = 200,
    ) -> None:
        self.store = store
        self.models = models
        self.spec_of = spec_of
        self.reward_wait = reward_wait
        self.snapshot_every = snapshot_every
        self.offset = ""
        # shown, label not known yet: (features, shown at, placement)
        self.pending: dict[Key, tuple[dict[str, float], float, str]] = {}
        self.resolved: dict[Key, float] = {}
        self.applied = 0
        self.trimmed = 0  # log entries this process dropped (everyone was past them)
        self.consumer_id = uuid.uuid4().hex[:12]
        self._since_snapshot = 0
        self._lock = threading.Lock()

    def restore(self) -> None:
        """Load the last snapshot, if any; the next :meth:`catch_up` replays the rest.

        Either way this process registers as a consumer of the log at its offset, so
        no other replica trims what it has not applied yet.
        """
        try:
            self._restore()
        finally:
            self.trimmed += self.store.trim_learning_log(self.consumer_id, self.offset)

    def _restore(self) -> None:
        saved = self.store.load_models()
        if saved is None:
            return
        blob, offset = saved
        try:
            models_blob, pending, resolved = pickle.loads(blob)
            self.models.restore(models_blob)
        except (ValueError, TypeError, pickle.UnpicklingError):
            log.warning("model snapshot in an older format: relearning from the whole log")
            return
        with self._lock:
            self.pending, self.resolved, self.offset = pending, resolved, offset

    def snapshot(self) -> None:
        with self._lock:
            self._snapshot()

    def _snapshot(self) -> None:
        blob = pickle.dumps((self.models.snapshot(), self.pending, self.resolved))
        self.store.save_models(blob, self.offset)
        self._since_snapshot = 0
        self.trimmed += self.store.trim_learning_log(self.consumer_id, self.offset)

    def catch_up(self, batch: int = 500) -> int:
        """Apply every logged event after our offset; returns how many were applied."""
        total = 0
        with self._lock:
            while True:
                events = self.store.learning_events(self.offset, batch)
                for offset, event in events:
                    self._apply(event)
                    self.offset = offset
                total += len(events)
                self._since_snapshot += len(events)
                if len(events) < batch:
                    break
            if self._since_snapshot >= self.snapshot_every:
                self._snapshot()
        self.applied += total
        return total

    def _label(self, key: Key, features: dict[str, float], label: bool, at: float,
               placement: str) -> None:
        spec, prior = self.spec_of(placement, key[1])
        self.models.learn(key[1], spec, prior, features, label, placement)
        self.resolved[key] = at
        self.pending.pop(key, None)

    def _apply(self, event: LearningEvent) -> None:
        now = event.received_at
        self._expire(now)
        key = (event.decision_id, event.action_id)
        if key in self.resolved:
            return
        if event.outcome == "impression":
            self.pending.setdefault(key, (event.features, now, event.placement))
        elif event.outcome in REWARD_OUTCOMES:
            self._label(key, event.features, True, now, event.placement)
        elif event.outcome in NEGATIVE_OUTCOMES:
            self._label(key, event.features, False, now, event.placement)

    def _expire(self, now: float) -> None:
        # both maps are in log (receive-time) order, so stop at the first young entry
        cutoff = now - self.reward_wait
        for key, (features, shown_at, placement) in list(self.pending.items()):
            if shown_at >= cutoff:
                break
            self._label(key, features, False, now, placement)
        # a decision-action gets no new outcomes after twice the wait: forget it
        for key, at in list(self.resolved.items()):
            if at >= cutoff - self.reward_wait:
                break
            del self.resolved[key]
