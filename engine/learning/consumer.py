"""Feeds the learning log to the propensity models, in log order, with delayed labels.

Each shown action is learnt when its first outcome arrives, as a (fake) negative,
and again as a positive when its first click or conversion arrives, with the
importance weights of :mod:`engine.learning.delayed`; nothing waits for the reward
wait, so applying an event costs O(1) whatever the traffic. The quality metrics do
wait: a prediction is scored against its *final* label (rewarded, or not within
``reward_wait`` seconds of the log's own receive times, so every replica scores
identically), kept in :class:`~engine.learning.quality.FinalLabels`.

Models learn here, on the background consumer (:meth:`Learner.catch_up`, called by
the server's loop), never on the Feedback request path. State (models, labels
awaited, log offset) is snapshotted to the store every ``snapshot_every`` events,
so a restarted process loads the snapshot and replays only the log after it. After
each snapshot the log is trimmed below the oldest offset any live replica (or the
snapshot) still needs.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping

from dsl.ruleset import ClusterSpec, ModelSpec, ScoreSpec
from dsl.vocabulary import DEFAULT_REWARD_WAIT_SECONDS
from engine.learning.clusters import ClusterModels, split_features
from engine.learning.delayed import fake_negative_weight, positive_weight
from engine.learning.log import LearningLog, offset_key
from engine.learning.models import PropensityModels
from engine.learning.quality import FinalLabels
from engine.learning.recommender import Recommender
from engine.learning.scores import ScoreModels
from engine.learning.snapshots import sign, verify
from engine.records import FORGET, LearningEvent
from engine.throttled_log import ThrottledLog

SNAPSHOT_FORMAT = 5
"""Version of the pickled snapshot; an older one is ignored and the log replayed."""
LEASE_SECONDS = 10.0
"""How long the one learner's lease lasts unrenewed (it renews it every step, about
every second): a learner that died or lost the store is replaced after this long."""
PUBLISH_SECONDS = 5.0
"""The one learner publishes its state this often (when it learnt something): how far
behind the others' models are, besides their one-second step, while snapshots are
small. (A learner's state is bounded, but grows with customers to tens of MB.)"""
SNAPSHOT_SHARE = 0.05
"""Publishing (the learner) or adopting (the others) a snapshot takes at most this share
of a process's time: when one takes longer than ``SNAPSHOT_SHARE * PUBLISH_SECONDS``,
the next waits proportionally longer (models staler, cost flat)."""
log = logging.getLogger(__name__)
throttled = ThrottledLog(log, 60.0)
SpecOf = Callable[[str, str], tuple[ModelSpec, float]]
"""(placement, action id) -> the placement's model spec and the action's prior."""


def _draw(event: LearningEvent, label: bool) -> float:
    """A uniform number in [0, 1) fixed by the example, the same on every replica."""
    seed = f"{event.decision_id}:{event.action_id}:{int(label)}".encode()
    return zlib.crc32(seed) / 2.0**32


class Learner:
    def __init__(
        self,
        store: LearningLog,
        models: PropensityModels,
        spec_of: SpecOf,
        reward_wait: float = DEFAULT_REWARD_WAIT_SECONDS,
        snapshot_every: int = 200,
        snapshot_seconds: float = 30.0,
        snapshot_key: bytes | None = None,
        clock: Callable[[], float] | None = None,
        recommender: Recommender | None = None,
        clusters: ClusterModels | None = None,
        clusters_of: Callable[[], Mapping[str, ClusterSpec]] | None = None,
        scores: ScoreModels | None = None,
        scores_of: Callable[[], Mapping[str, ScoreSpec]] | None = None,
        elected: bool = False,
    ) -> None:
        self.store = store
        self.models = models
        self.recommender = recommender if recommender is not None else Recommender()
        self.clusters = clusters if clusters is not None else ClusterModels()
        self.clusters_of = clusters_of  # the serving ruleset's cluster definitions
        self.scores = scores if scores is not None else ScoreModels()
        self.scores_of = scores_of  # and its predictive scores
        self.spec_of = spec_of
        self.reward_wait = reward_wait
        self.elected = elected  # one learner for all processes (the lease holder)
        self.leading = False  # this process holds the lease (elected only)
        self.adopted = 0  # snapshots of the one learner taken (elected, following)
        self._adopt_after = 0.0  # monotonic time before which no snapshot is adopted
        if elected:  # the others learn only through what it publishes
            snapshot_every, snapshot_seconds = 1, PUBLISH_SECONDS
        self.snapshot_every = snapshot_every
        self.snapshot_seconds = snapshot_seconds  # and at most this often: a snapshot's
        # cost grows with the models and the labels awaited, so it is paid by time
        self.snapshot_key = snapshot_key  # None: no snapshots (nor trimming below them)
        self.clock = clock  # expires final labels when no event arrives (quality only)
        self.offset = ""
        self.labels = FinalLabels()  # predictions awaiting their final label (quality)
        self.applied = 0
        self.last_received = 0.0  # receive time of the newest event applied (lag metric)
        self.corrupt = 0  # log entries that did not decode (stepped over)
        self.trimmed = 0  # log entries this process dropped (everyone was past them)
        self.consumer_id = uuid.uuid4().hex[:12]
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._lock = threading.Lock()

    def restore(self) -> None:
        """Load the last snapshot, if any; the next :meth:`catch_up` replays the rest.

        Either way this process registers as a consumer of the log at its offset, so
        no other replica trims what it has not applied yet (elected: only the learner
        reads the log, and registers when it publishes).
        """
        try:
            self._restore()
        finally:
            if not self.elected:
                self.trimmed += self.store.trim_learning_log(self.consumer_id, self.offset)

    def _restore(self) -> None:
        saved = self.store.load_models()
        if saved is None:
            return
        if self.snapshot_key is None:
            log.warning("a model snapshot exists but no snapshot key is configured "
                        "(ARBITER_SNAPSHOT_KEY): relearning from the log")
            return
        try:
            with self._lock:
                self._install(*saved)
        except Exception as err:  # refused, older, or written by another River: relearn
            log.warning("model snapshot not loaded (%s: %s); relearning from the log "
                        "(entries older than the snapshot may have been trimmed: the models "
                        "learn again from what the log still holds)", type(err).__name__, err)

    def _install(self, stored: bytes, offset: str) -> None:
        """Take the state of a snapshot (verified first; raises when refused)."""
        assert self.snapshot_key is not None
        version, models_blob, labels, recommender, clusters, scores = pickle.loads(
            verify(self.snapshot_key, offset, stored))
        if (version != SNAPSHOT_FORMAT or not isinstance(recommender, Recommender)
                or not isinstance(clusters, ClusterModels)
                or not isinstance(scores, ScoreModels)):
            raise ValueError(f"snapshot format {version}")
        self.models.restore(models_blob)
        self.recommender.__setstate__(recommender.__getstate__())
        self.clusters.__setstate__(clusters.__getstate__())
        self.scores.__setstate__(scores.__getstate__())
        self.labels, self.offset = labels, offset
        if "-" in offset:  # a Redis stream id: the receive time (ms) of its newest event
            self.last_received = max(self.last_received, int(offset.split("-")[0]) / 1000)

    def step(self) -> int:
        """This process's turn of learning; returns the log events applied. Every process
        catches up with the log; elected, only the lease holder does, and the others
        adopt the newest state it published."""
        if not self.elected:
            return self.catch_up()
        if not self.store.hold_learner_lease(self.consumer_id, LEASE_SECONDS):
            if self.leading:
                log.info("another process is the learner now (--learners one)")
            self.leading = False
            self.adopt()
            return 0
        if not self.leading:  # from the newest published state: the log before it may
            self.adopt(now=True)  # be trimmed already
            self.leading = True
            log.info("this process is the learner (--learners one)")
        return self.catch_up()

    def adopt(self, now: bool = False) -> bool:
        """Take the newest published snapshot if it is past this process's state; True
        when taken. A damaged or foreign one is refused (logged), the state kept. Unless
        ``now``, an adoption waits in proportion to the last one's cost (SNAPSHOT_SHARE)."""
        if self.snapshot_key is None or (not now and time.monotonic() < self._adopt_after):
            return False
        if offset_key(self.store.models_offset()) <= offset_key(self.offset):
            return False
        saved = self.store.load_models()
        if saved is None or offset_key(saved[1]) <= offset_key(self.offset):
            return False
        started = time.monotonic()
        try:
            with self._lock:
                self._install(*saved)
        except Exception as err:
            throttled.warning("adopt", "the learner's snapshot at %s not adopted (%s: %s)",
                              saved[1], type(err).__name__, err)
            return False
        finally:
            took = time.monotonic() - started
            self._adopt_after = started + max(0.0, took / SNAPSHOT_SHARE)
        self.adopted += 1
        return True

    def resign(self) -> None:
        """Let the learner's lease go (on shutdown), so another process takes over now."""
        if self.elected and self.leading:
            self.leading = False
            self.store.release_learner_lease(self.consumer_id)

    def snapshot(self) -> None:
        """Save the state now (elected: only the learner; the others' is never newer)."""
        if self.elected and not self.leading:
            return
        with self._lock:
            self._snapshot()

    def _snapshot(self) -> None:
        self._since_snapshot = 0
        started = self._last_snapshot = time.monotonic()
        if self.snapshot_key is not None:
            blob = pickle.dumps((SNAPSHOT_FORMAT, self.models.snapshot(), self.labels,
                                 self.recommender, self.clusters, self.scores))
            self.store.save_models(sign(self.snapshot_key, self.offset, blob), self.offset)
        self.trimmed += self.store.trim_learning_log(self.consumer_id, self.offset)
        if self.elected:  # the next publication waits in proportion to this one's cost
            self.snapshot_seconds = max(PUBLISH_SECONDS,
                                        (time.monotonic() - started) / SNAPSHOT_SHARE)

    def catch_up(self, batch: int = 500) -> int:
        """Apply every logged event after our offset; returns how many were applied."""
        total = 0
        with self._lock:
            while True:
                events = self.store.learning_events(self.offset, batch)
                for offset, event in events:
                    self.offset = offset
                    if event is None:  # an entry that does not decode: stepped over
                        self.corrupt += 1
                        log.warning("learning-log entry %s does not decode; skipped", offset)
                        continue
                    self._apply(event)
                    self.last_received = event.received_at
                total += len(events)
                self._since_snapshot += len(events)
                if len(events) < batch:
                    break
            if self.clock is not None:  # quiet log: labels still become final with time
                self._score(self.clock() - self.reward_wait)
            if (self._since_snapshot >= self.snapshot_every
                    and time.monotonic() - self._last_snapshot >= self.snapshot_seconds):
                self._snapshot()
        self.applied += total
        return total

    def _apply(self, event: LearningEvent) -> None:
        """Learn what the event teaches (O(1)); score predictions whose label is final."""
        if event.item_id or event.outcome == FORGET:
            self.recommender.learn(event)
        if event.outcome == FORGET and event.user:
            self.scores.forget(event.user)
        if event.profile_features and event.user and self.scores_of is not None:
            scores = self.scores_of()
            if scores:
                self.scores.learn(scores, event.user, event.at, event.profile_features)
        if event.profile_features and self.clusters_of is not None:
            clusters = self.clusters_of()
            for name, x in split_features(clusters, event.profile_features).items():
                if any(v is not None for v in x.values()):
                    self.clusters.learn(clusters[name], x)
        if event.shown or event.rewarded:
            spec, prior = self.spec_of(event.placement, event.action_id)
            key = (event.decision_id, event.action_id)
            learn = self.models.learn
            if event.shown:
                predicted = learn(event.action_id, spec, prior, event.features, False,
                                  event.placement, weight=fake_negative_weight,
                                  draw=_draw(event, False))
                self.labels.shown(key, spec.key(event.placement, event.action_id), predicted,
                                  event.received_at)
            if event.rewarded:
                learn(event.action_id, spec, prior, event.features, True, event.placement,
                      weight=positive_weight, draw=_draw(event, True),
                      new_example=False)  # counted when it was shown
                self.labels.rewarded(key)
        self._score(event.received_at - self.reward_wait)

    def _score(self, before: float) -> None:
        """Record the quality of every prediction whose label became final before ``before``."""
        for model, label, predicted in self.labels.expire(before):
            self.models.record_quality(model, label, predicted)
