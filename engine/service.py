"""The Arbiter library API: decide, feedback, track, profiles. gRPC is a thin layer on it.

>>> from dsl.loader import load_path
>>> from adapters.memory import MemoryStore
>>> arbiter = Arbiter(load_path("rulesets/retail"), MemoryStore(), seed=1)
>>> d = arbiter.decide(user_id="new-user", placement="homepage_banner", channel="web")
>>> d.actions[0].action_id
'onboarding_tour'
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from dsl.ruleset import ModelSpec, Ruleset
from dsl.runtime import hour_of_day
from dsl.vocabulary import ATTRIBUTION_WINDOW_SECONDS, DEFAULT_PRIOR, DEFAULT_REWARD_WAIT_SECONDS
from engine.catalogue_sync import CatalogueKeeper
from engine.decide import pipeline
from engine.decide.catalogue import Catalogue
from engine.decide.clusters import features_of, profile_args
from engine.decide.decision import Decision
from engine.decide.population import PopulationStats, statistics
from engine.decide.recommend import Recommendations
from engine.decide.send_time import PopulationHours, SendTime
from engine.decide.tracer import Tracer
from engine.decision_log import DecisionLog, decision_entry, outcome_entry
from engine.experiments.report import ExperimentReport, experiment_report
from engine.experiments.sampling import ThompsonSampler
from engine.experiments.splits import split_fingerprint
from engine.experiments.state import ExperimentStates
from engine.feedback import FeedbackInput, feedback_effects
from engine.learning.clusters import ClusterModels
from engine.learning.consumer import Learner
from engine.learning.log import LEARNING_MODES
from engine.learning.models import ModelQuality, PropensityModels
from engine.learning.recommender import Recommender
from engine.learning.scores import ScoreModels
from engine.ports import (
    DecisionNotFound,
    FeedbackCommit,
    FeedbackEffects,
    ProfileChangedError,
    Store,
    StoreUnavailable,
)
from engine.profiles import ENGAGEMENTS, PACKED, PROFILE_LAYOUTS
from engine.records import (
    ArmCounts,
    CorruptRecord,
    DecisionRecord,
    Profile,
    decode_stored_profile,
)
from engine.requests import (
    Aborted,
    DecideInput,
    InvalidArgument,
    check_id,
    check_outcome,
    check_time,
    decide_input,
    track_input,
)
from engine.throttled_log import ThrottledLog
from engine.tracking import TrackPlan

log = logging.getLogger(__name__)

SHOWN_ATTEMPTS = 20
"""Writes of a recorded send (a decision stored with its impression): when its customer's
profile changed between the read and the write (another campaign or replica sending to
them, an event), nothing is stored and it is decided again on the profile as it is now,
so caps hold (each attempt lost is another write that won: k senders at once need at
most k). After the last, it is refused ``ABORTED`` (nothing recorded: send it again), as
:data:`CONTENDED` says."""
CONTENDED = ("user_id: the customer's profile kept changing while this send was being "
             "recorded (other sends or events at the same moment); nothing was recorded: "
             "send it again")
"""Why a recorded send was refused when its attempts ran out."""
throttled = ThrottledLog(log)  # an outage's repeated warnings, one line per 10 s


FORGOTTEN_GATHER_SECONDS = 10.0
"""How often :meth:`Arbiter.sync` looks for users other processes forgot: their erasure
from this process's decision log (a pass over the file) is shared by what gathered."""

FORGOTTEN_PAGE = 1000
"""Forgotten users read from the store per round trip."""

_ID_BITS = random.Random()  # seeded from os.urandom; private, so nothing reseeds it


def attribution_windows(ruleset: Ruleset) -> dict[str, float]:
    """Placements whose decisions take feedback for their own ``attribution:`` time."""
    return {name: placement.attribution for name, placement in ruleset.placements.items()
            if placement.attribution is not None}


def _reseed_ids() -> None:
    _ID_BITS.seed()


os.register_at_fork(after_in_child=_reseed_ids)


def new_decision_id() -> str:
    """128 random bits as 32 hex digits (the shape of ``uuid4().hex``, a sixth of its cost).

    A generator of its own, seeded from the OS at start and reseeded in every forked
    child: ids never repeat across processes or replicas, whatever else seeds the
    global ``random`` (a library, or Hypothesis, which reseeds it for every example
    and made the fuzzer's decision ids repeat).
    """
    return f"{_ID_BITS.getrandbits(128):032x}"


class Arbiter:
    """Decisions over a swappable ruleset, backed by a :class:`~engine.ports.Store`."""

    def __init__(
        self,
        ruleset: Ruleset,
        store: Store,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        reward_wait: float = DEFAULT_REWARD_WAIT_SECONDS,
        attribution_window: float = ATTRIBUTION_WINDOW_SECONDS,
        decision_log: DecisionLog | None = None,
        snapshot_key: bytes | None = None,
        learners: str = "every",
        profile_layout: str = PACKED,
        serves: bool = True,
    ) -> None:
        """``serves=False``: a reader of a shared store whose ruleset is not served (a
        report from Redis with a candidate's rules): it marks no fixed split."""
        if learners not in LEARNING_MODES:
            raise ValueError(f"learners must be {' or '.join(LEARNING_MODES)}, not {learners!r}")
        if profile_layout not in PROFILE_LAYOUTS:
            raise ValueError(f"profile_layout must be {' or '.join(PROFILE_LAYOUTS)}, "
                             f"not {profile_layout!r}")
        if learners == "one" and snapshot_key is None:  # the others could never adopt
            raise ValueError('learners="one" needs a snapshot_key: the other processes '
                             "load the learner's signed snapshots")
        self._ruleset = ruleset
        self._windows = attribution_windows(ruleset)
        self.store = store
        self.profile_layout = profile_layout
        self.clock = clock
        self.attribution_window = attribution_window
        self.decision_log = decision_log
        self._forgotten_cursor: str | None = None  # (erase_forgotten_elsewhere)
        self._forgotten_due = time.monotonic() + FORGOTTEN_GATHER_SECONDS
        self.sampler = ThompsonSampler(seed)
        self.models = PropensityModels()
        self.recommender = Recommender()
        self._serving_recommendations: Recommendations | None = None
        self.clusters = ClusterModels()
        self.scores = ScoreModels()
        self.learner = Learner(store, self.models, self.spec_of, reward_wait=reward_wait,
                               snapshot_key=snapshot_key, clock=clock,
                               recommender=self.recommender, clusters=self.clusters,
                               clusters_of=lambda: self._ruleset.clusters,
                               scores=self.scores, scores_of=lambda: self._ruleset.scores,
                               elected=learners == "one")
        self.catalogue_keeper = CatalogueKeeper(store, ruleset)
        self.experiments = ExperimentStates(self._arm_counts_or_none, self.sampler, clock)
        self.population = PopulationHours()  # engagement by hour of week, all replicas
        self.percentiles = PopulationStats()  # percentile() statistics, all replicas
        self.feedback_logged = threading.Event()  # set by Feedback, cleared by the learner
        self._restored = False  # the model snapshot loaded (or found absent)
        self._restoring = threading.Lock()  # the learner's and the sync's threads
        try:
            self.learn()
        except StoreUnavailable as err:  # serve degraded; sync() and the learner retry
            log.warning("the store is unreachable at start (%s): deciding as for unknown "
                        "customers (degraded) until it answers", err)
        self._sync_population()
        self.catalogue_keeper.sync()
        self._follow_forgotten()  # (from here on: what other processes forget)
        self._serves = serves
        self._splits_marked: dict[str, str] = {}  # experiment -> the split the store has
        self._mark_splits()

    # ---- ruleset ------------------------------------------------------------------
    @property
    def ruleset(self) -> Ruleset:
        return self._ruleset

    def swap_ruleset(self, ruleset: Ruleset) -> None:
        """Serve ``ruleset`` from the next request on (an atomic reference swap)."""
        if not self.experiments.pull:  # its experiments' counters before it serves
            self.experiments.refresh(ruleset.experiments)
        self.catalogue_keeper.rebase(ruleset)
        self._windows = attribution_windows(ruleset)
        self._ruleset = ruleset
        self._mark_splits()

    def _mark_splits(self) -> None:
        """Tell the store how this process allocates each experiment: a changed split
        starts a phase of its sample-ratio check (engine.experiments.splits). Those the
        store could not be told are told at the next :meth:`sync`."""
        if not self._serves:
            return
        for experiment in self._ruleset.experiments.values():
            fingerprint = split_fingerprint(experiment)
            if self._splits_marked.get(experiment.name) == fingerprint:
                continue
            try:
                self.store.mark_split(experiment.name, fingerprint)
            except StoreUnavailable as err:
                throttled.warning("splits", "fixed splits not marked (retried): %s", err)
                return
            self._splits_marked[experiment.name] = fingerprint

    def _arm_counts_or_none(self, experiment: str) -> Mapping[str, ArmCounts] | None:
        """The store's counters, or None while it is unavailable (decisions go on with the
        last counters known)."""
        try:
            return self.store.arm_counts(experiment)
        except StoreUnavailable as err:
            throttled.warning("arm-counters", "arm counters unavailable, using the last "
                              "known: %s", err)
            return None

    def spec_of(self, placement: str, action_id: str) -> tuple[ModelSpec, float]:
        """The serving ruleset's model spec for a placement, and an action's prior."""
        ruleset = self._ruleset
        action = ruleset.actions.get(action_id)
        return ruleset.model_of(placement), action.prior if action is not None else DEFAULT_PRIOR

    # ---- Decide -------------------------------------------------------------------
    def decide(
        self,
        *,
        user_id: str,
        placement: str,
        channel: str = "",
        context: Mapping[str, Any] | None = None,
        limit: int = 0,
        explain: bool = False,
        at: float | None = None,
        tracer: Tracer | None = None,
    ) -> Decision:
        """Decide for one customer; ``explain`` adds reasons, ``tracer`` listens to the stages.

        The three steps (:meth:`decide_request`, :meth:`decide_from`,
        :meth:`finish_decide`) are public so that an asynchronous server can do the store
        I/O between them without blocking its loop.
        """
        req = self.decide_request(user_id=user_id, placement=placement, channel=channel,
                                  context=context, limit=limit, explain=explain, at=at)
        profile, available = self._profile_for_decide(user_id)
        decision, record = self.decide_from(req, profile, tracer)
        stored = self._record(record)
        return self.finish_decide(req, decision, profile, available and stored)

    def decide_shown(self, req: DecideInput) -> tuple[Decision, bool]:
        """:meth:`decide` for a checked request (:meth:`decide_request`), its first action
        counted as shown (an impression at the decision's time: a campaign's send, so that
        caps and cooldowns count it for the next one), stored with the record in one step
        of the store; and whether it was counted (not without an action, for a degraded
        decision, or one decided for a time past its attribution window).

        >>> from adapters.memory import MemoryStore
        >>> from dsl.loader import load_path
        >>> arbiter = Arbiter(load_path("rulesets/retail"), MemoryStore())
        >>> send = arbiter.decide_request(user_id="ann", placement="homepage_banner",
        ...                               channel="web")
        >>> decision, counted = arbiter.decide_shown(send)
        >>> shown = decision.actions[0].action_id
        >>> counted, arbiter.store.get_decision(decision.decision_id).outcomes[shown]
        (True, ['impression'])
        >>> from engine.decide.contacts import contact_entries  # what caps count
        >>> history = arbiter.store.get_profile("ann").contacts[shown]
        >>> [kind for _, kind, _ in contact_entries(history)]
        ['impression']
        """
        as_read, profile, available = self._profile_bytes_for_decide(req.user_id)
        for _ in range(SHOWN_ATTEMPTS):
            decision, record = self.decide_from(req, profile)
            ttl = self.record_ttl(record) if available and decision.actions else None
            if ttl is None:
                stored = self._record(record)
                return self.finish_decide(req, decision, profile, available and stored), False
            fb = self.impression_input(record)
            try:
                commit = self.store.save_shown_decision(
                    record, ttl, fb.key,
                    functools.partial(_impression_effects, fb, self.profile_layout),
                    fb.fingerprint, as_read, compare=True)
            except ProfileChangedError as err:  # another send or event meanwhile: decide
                as_read = err.changed.profile   # again on the profile as it is now
                found = decode_stored_profile(as_read) if as_read is not None else None
                if isinstance(found, CorruptRecord):
                    log.error("decide degraded: %s", found)
                    return self.finish_decide(req, decision, None, False), False
                profile = found
                continue
            except DecisionNotFound:  # its window closed meanwhile: kept without it, if at all
                return self.finish_decide(req, decision, profile, self._record(record)), False
            except StoreUnavailable as err:
                log.warning("decide degraded, decision not recorded: %s", err)
                return self.finish_decide(req, decision, profile, False), False
            self.experiments.invalidate(self.feedback_applied(fb, commit))
            return self.finish_decide(req, decision, profile, True), True
        raise Aborted(CONTENDED)

    def impression_input(self, record: DecisionRecord) -> FeedbackInput:
        """The impression of a decision's first action at the decision's own time, as
        DecideBatch's ``record_impressions`` counts it."""
        return self.feedback_input(decision_id=record.decision_id,
                                   action_id=record.actions[0].action_id,
                                   outcome="impression", at=record.decided_at)

    def decide_request(
        self,
        *,
        user_id: str,
        placement: str,
        channel: str = "",
        context: Mapping[str, Any] | None = None,
        limit: int = 0,
        explain: bool = False,
        at: float | None = None,
    ) -> DecideInput:
        """The checked request (raises InvalidArgument naming the field)."""
        return decide_input(self._ruleset, user_id=user_id, placement=placement,
                            channel=channel, context=context, limit=limit, explain=explain,
                            at=at, now=self.clock())

    def decide_from(self, req: DecideInput, profile: Profile | None,
                    tracer: Tracer | None = None) -> tuple[Decision, DecisionRecord]:
        """The decision for a loaded profile (None: unknown customer), and its record.
        Pure computation: no store I/O."""
        ruleset = req.ruleset if req.ruleset is not None else self._ruleset
        return pipeline.run(
            ruleset, req, profile,
            decision_id=new_decision_id(),
            models=self.models,
            experiment_state=self.experiments.get,
            sampler=self.sampler,
            tracer=tracer,
            population=self.population.prior,
            percentiles=self.percentiles,
            recommendations=self._recommendations() if ruleset.items_declared else None,
            clusters=self.clusters,
            scores=self.scores,
        )

    def _recommendations(self) -> Recommendations:
        """What recommend() reads, one object while the catalogue and the recommender
        stay the same (it keeps what is the same for every customer with no history)."""
        served = self._serving_recommendations
        catalogue, recommender = self.catalogue, self.recommender
        if (served is None or served.catalogue is not catalogue
                or served.recommender is not recommender):
            served = self._serving_recommendations = Recommendations(catalogue, recommender)
        return served

    def attribution_for(self, placement: str) -> float:
        """Seconds a decision at ``placement`` takes feedback, from its own time: the
        placement's ``attribution:``, else the server's ``attribution_window``."""
        return self._windows.get(placement, self.attribution_window)

    @property
    def longest_attribution(self) -> float:
        """The longest time any decision of the serving ruleset takes feedback."""
        return max([self.attribution_window, *self._windows.values()])

    def record_ttl(self, record: DecisionRecord) -> float | None:
        """Seconds the record must be kept to take feedback; None when it needs no storing
        (nothing shown and no holdout, or already past its attribution window)."""
        ttl = self.attribution_for(record.placement) - (self.clock() - record.decided_at)
        if not (record.actions or record.holdout) or ttl <= 0:  # holdouts: lift
            return None
        return ttl

    def finish_decide(self, req: DecideInput, decision: Decision, profile: Profile | None,
                      complete: bool) -> Decision:
        """Mark the decision degraded unless its profile was read and its record stored,
        and write it to the decision log."""
        if not complete:
            decision = msgspec.structs.replace(decision, degraded=True)
        if self.decision_log is not None and self.decision_log.keeps(decision.decision_id):
            ruleset = req.ruleset if req.ruleset is not None else self._ruleset
            self.decision_log.write(decision_entry(ruleset, decision, req.context, profile))
        return decision

    def _profile_bytes_for_decide(self, user_id: str
                                  ) -> tuple[bytes | None, Profile | None, bool]:
        """:meth:`_profile_for_decide` with the profile as stored (what a send's write
        compares)."""
        try:
            data = self.store.profile_bytes(user_id)
        except StoreUnavailable as err:
            log.warning("decide degraded, profile unavailable: %s", err)
            return None, None, False
        profile = decode_stored_profile(data) if data is not None else None
        if isinstance(profile, CorruptRecord):  # as for an unknown customer, degraded
            log.error("decide degraded: %s", profile)
            return None, None, False
        return data, profile, True

    def _profile_for_decide(self, user_id: str) -> tuple[Profile | None, bool]:
        """The stored profile and True; (None, False) when the store cannot be read in
        time: the decision goes on, degraded, as for an unknown customer."""
        try:
            return self.store.get_profile(user_id), True
        except StoreUnavailable as err:
            log.warning("decide degraded, profile unavailable: %s", err)
            return None, False
        except CorruptRecord as err:  # decide as for an unknown customer, marked degraded
            log.error("decide degraded: %s", err)
            return None, False

    def _record(self, record: DecisionRecord) -> bool:
        """Store the decision for the attribution window (from its own time) so that it
        can take feedback; False when the store failed (the decision is degraded)."""
        ttl = self.record_ttl(record)
        if ttl is None:
            return True
        try:
            self.store.save_decision(record, ttl)
        except StoreUnavailable as err:
            log.warning("decide degraded, decision not recorded: %s", err)
            return False
        return True

    def arm_counts(self, experiment: str) -> Mapping[str, ArmCounts]:
        """The experiment's raw counters as decisions see them (cached, refreshed each second)."""
        return self.experiments.counts(experiment)

    # ---- Feedback -----------------------------------------------------------------
    def feedback(
        self,
        *,
        decision_id: str,
        action_id: str,
        outcome: str,
        value: float | None = None,
        idempotency_key: str = "",
        at: float | None = None,
        item_id: str = "",
    ) -> FeedbackCommit:
        """Apply an outcome once per idempotency key. Raises DecisionNotFound,
        ActionNotInDecision or InvalidArgument. ``item_id``: the outcome is about one of
        the action's recommended items (the recommender learns it)."""
        fb = self.feedback_input(decision_id=decision_id, action_id=action_id,
                                 outcome=outcome, value=value,
                                 idempotency_key=idempotency_key, at=at, item_id=item_id)
        commit = self.store.commit_feedback(
            decision_id, fb.key, lambda d, p: feedback_effects(fb, d, p, self.profile_layout),
            self.attribution_window, fb.fingerprint)
        self.experiments.invalidate(self.feedback_applied(fb, commit))
        return commit

    def feedback_input(self, *, decision_id: str, action_id: str, outcome: str,
                       value: float | None = None, idempotency_key: str = "",
                       at: float | None = None, item_id: str = "") -> FeedbackInput:
        """The checked Feedback request (raises InvalidArgument naming the field). With
        :meth:`feedback_applied`, the two halves of :meth:`feedback` around the store's
        transaction, for a server that awaits it."""
        check_id("decision_id", decision_id)
        check_id("action_id", action_id)
        if item_id:
            check_id("item_id", item_id)
        check_outcome(outcome)
        if idempotency_key:
            check_id("idempotency_key", idempotency_key)
        if value is not None and not math.isfinite(value):
            raise InvalidArgument("value", "must be a finite number")
        now = self.clock()
        return FeedbackInput(decision_id, action_id, outcome, value, idempotency_key,
                             check_time("timestamp", at, now), now, self.attribution_window,
                             self._windows,
                             item_id)

    def feedback_applied(self, fb: FeedbackInput, commit: FeedbackCommit) -> set[str]:
        """What follows a stored outcome in this process (send-time population, decision
        log, the learner woken); returns the experiments whose counters it moved (the
        caller refreshes them: :meth:`ExperimentStates.invalidate`)."""
        if commit.duplicate or commit.effects is None:
            return set()
        if fb.outcome in ENGAGEMENTS:
            self.population.add(fb.at)
        if self.decision_log is not None and self.decision_log.keeps(fb.decision_id):
            self.decision_log.write(outcome_entry(commit.effects.event,
                                                  commit.effects.decision.user_id))
        self.feedback_logged.set()  # the background learner picks it up
        return {e for e, _ in commit.effects.arm_increments}

    def learn(self) -> int:
        """Train the models on every learning event logged since the last call (by any
        replica); returns how many were applied. The server calls this in the
        background; Feedback never waits for a model. The first call loads the model
        snapshot first (a store that was unreachable when this Arbiter was made: the
        first call that reaches it); raises StoreUnavailable while it cannot be read."""
        if not self._restored:
            with self._restoring:
                if not self._restored:
                    self.learner.restore()
                    self._restored = True
        return self.learner.step()

    def sync(self) -> int:
        """Re-read other replicas' arm counters and learn from the log; events applied."""
        if self.experiments.pull:
            self.experiments.invalidate_all()
        else:
            self.experiments.refresh(self._ruleset.experiments)
        self._sync_population()
        self.catalogue_keeper.sync()
        self._mark_splits()
        if time.monotonic() >= self._forgotten_due:
            self._forgotten_due = time.monotonic() + FORGOTTEN_GATHER_SECONDS
            self._follow_forgotten()
        return self.learn()

    def _follow_forgotten(self) -> None:
        """:meth:`erase_forgotten_elsewhere`, whose failure (the store down, its stream not
        a stream) is retried at the next look and stops nothing else."""
        try:
            self.erase_forgotten_elsewhere()
        except Exception as err:
            throttled.warning("forgotten", "the users forgotten elsewhere could not be "
                              "read (retried): %s", err)

    def erase_forgotten_elsewhere(self) -> None:
        """Queue the erasure, from this process's decision log, of the users that other
        processes forgot since the last call (or since the log last followed them)."""
        if self.decision_log is None:
            return
        cursor = self._forgotten_cursor
        if cursor is None:
            cursor = self.decision_log.forget_cursor
        gathered: list[str] = []
        after = cursor
        while True:  # (a backlog, after a restart: every page in one pass over the file)
            pseudonyms, page_end = self.store.forgotten_since(after, FORGOTTEN_PAGE)
            gathered += pseudonyms
            done = page_end == after or not after  # ("": where the stream is now)
            after = page_end
            if done:
                break
        if after != cursor:
            self.decision_log.forget_pseudonyms(gathered, after)
        self._forgotten_cursor = after

    # ---- catalogue ----------------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        """The item catalogue served now (the ruleset's file and the store's changes)."""
        return self.catalogue_keeper.catalogue

    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Add or replace catalogue items (checked against the items block; raises
        InvalidArgument naming ``items[i].NAME``); every replica sees them within a
        second. Returns the catalogue's version."""
        return self.catalogue_keeper.upsert(self._ruleset, items)

    def remove_items(self, item_ids: Sequence[str]) -> int:
        """Take items out of the catalogue (they are no longer recommended)."""
        return self.catalogue_keeper.remove(item_ids)

    def _sync_population(self) -> None:
        """Send this process's engagements by hour, read everyone's (send times)."""
        try:
            self.population.sync(self.store.add_counters)
            self.percentiles.sync(self.store.add_counters, self._ruleset.population)
        except StoreUnavailable as err:  # kept for the next sync
            throttled.warning("population", "population statistics not synced, store "
                              "unavailable: %s", err)

    def decide_without_store_reads(self) -> None:
        """Decisions stop reading arm counters from the store: :meth:`sync` (every second)
        and Feedback fetch them in their own threads. For an asynchronous server, whose
        loop must never wait on a blocking store call."""
        self.experiments.push_only()
        self.experiments.refresh(self._ruleset.experiments)

    # ---- reports ------------------------------------------------------------------
    def experiment_report(self, name: str) -> ExperimentReport:
        """Raises KeyError for an experiment the serving ruleset does not have."""
        ruleset = self._ruleset
        experiment = ruleset.experiments[name]
        return experiment_report(experiment, self.store.arm_counts(name), self.clock(),
                                 revision=ruleset.revision,
                                 split=self.store.split_mark(name) if experiment.weights
                                 else None)

    def model_report(self) -> list[ModelQuality]:
        """Every model's progressive quality: the propensity models, and the recommender,
        clusters and scores once they have learnt something (their own measures as
        metrics). Applies the learning log first (or, as one of ``learners="one"``'s
        followers, the newest snapshot)."""
        self.learn()
        return self.models.quality() + self.learnt_quality()

    def learnt_quality(self) -> list[ModelQuality]:
        """The recommender's, clusters' and scores' rows of :meth:`model_report`, as they
        stand (no store read: a metrics scrape calls it)."""
        report: list[ModelQuality] = []
        nan = float("nan")
        stats = self.recommender.stats()
        if stats["interactions"]:
            report.append(ModelQuality("@recommender", "co-occurrence+popularity+BiasedMF",
                                       int(stats["interactions"]), nan, nan, nan, nan, stats))
        specs = self._ruleset.clusters
        for name, examples, metrics in self.clusters.report(specs):
            report.append(ModelQuality(f"cluster:{name}", f"KMeans k={specs[name].k}",
                                       examples, nan, nan, nan, nan, metrics))
        for name, learner, labels, quality in self.scores.report(self._ruleset.scores):
            if isinstance(quality, dict):  # a target: its error
                report.append(ModelQuality(f"score:{name}", learner, labels, nan, nan, nan,
                                           nan, quality))
            else:
                report.append(ModelQuality(f"score:{name}", learner, labels,
                                           *quality.measures()))
        return report

    def learnt_values(self, profile: Profile) -> dict[str, float]:
        """The customer's scores and clusters now (``score.NAME``, ``cluster.NAME``: a
        cluster by number) and ``best_send_hour`` (0-23, their time zone), as GetProfile
        shows them; those not learnt yet are left out."""
        ruleset = self._ruleset
        args = profile_args(ruleset, profile, self.clock())
        out: dict[str, float] = {}
        for name, spec in ruleset.scores.items():
            value = self.scores.predict(spec, features_of(spec, args))
            if value is not None:
                out[f"score.{name}"] = value
        zone = profile.attributes.get("timezone")
        best = SendTime(profile.engagement, self.population.prior,
                        zone if isinstance(zone, str) else None).best_at(self.clock())
        hour = hour_of_day(best, zone if isinstance(zone, str) else None)
        if hour is not None:
            out["best_send_hour"] = hour
        for name, cluster in ruleset.clusters.items():
            assigned = self.clusters.assign(cluster, features_of(cluster, args))
            if assigned is not None:
                number = cluster.names.index(assigned) if isinstance(assigned, str) else assigned
                out[f"cluster.{name}"] = float(number)
        return out

    # ---- profiles -----------------------------------------------------------------
    def track(
        self,
        *,
        user_id: str,
        event_type: str,
        properties: Mapping[str, Any] | None = None,
        traits: Mapping[str, Any] | None = None,
        at: float | None = None,
        item_id: str = "",
        event_id: str = "",
    ) -> Profile:
        """Record a behavioural event; with ``item_id`` it is an interaction with that
        catalogue item, which the recommender learns (through the learning log). With
        ``event_id``, an event already applied under that id (a retry) changes nothing."""
        return self.track_stored(self.track_plan(
            user_id=user_id, event_type=event_type, properties=properties, traits=traits,
            at=at, item_id=item_id, event_id=event_id))

    def track_plan(self, *, user_id: str, event_type: str,
                   properties: Mapping[str, Any] | None = None,
                   traits: Mapping[str, Any] | None = None, at: float | None = None,
                   item_id: str = "", event_id: str = "") -> TrackPlan:
        """The checked TrackEvent (raises InvalidArgument naming the field) and what the
        store's transaction applies: with :meth:`track_applied`, the two halves of
        :meth:`track` around it, for a server that awaits the store; afterwards
        ``plan.duplicate`` says whether its ``event_id`` had been applied before."""
        req = track_input(self._ruleset, user_id=user_id, event_type=event_type,
                          properties=properties, traits=traits, at=at, now=self.clock(),
                          item_id=item_id, event_id=event_id)
        return TrackPlan(req, self._ruleset, self.clock(), self.profile_layout)

    def track_stored(self, plan: TrackPlan) -> Profile:
        """The plan applied in the store's (blocking) transaction, then in this process."""
        return self.track_applied(
            plan, self.store.update_profile(plan.user_id, plan.change, plan.learning))

    def track_applied(self, plan: TrackPlan, profile: Profile) -> Profile:
        """What follows a stored event in this process: the learner woken when it logged
        an entry, the population's send hours and percentile statistics moved (nothing
        for a duplicate)."""
        if plan.duplicate:
            return profile
        if plan.logged:
            self.feedback_logged.set()  # the background learner picks it up
        self.population.add(plan.req.at)
        if plan.keys:
            self.percentiles.move(plan.before, statistics(profile, plan.keys))
        return profile

    def get_profile(self, user_id: str) -> Profile | None:
        check_id("user_id", user_id)
        return self.store.get_profile(user_id)

    def forget(self, user_id: str) -> int:
        """Delete everything held about the user: profile, decisions, their feedback keys
        and learning-log entries (the store), and the decision log's lines about them.
        Returns the profile and decisions deleted."""
        check_id("user_id", user_id)
        keys = tuple(self._ruleset.population)
        try:  # the customer leaves the population's percentiles too
            before = statistics(self.store.get_profile(user_id), keys) if keys else {}
        except CorruptRecord:
            before = {}
        deleted = self.store.forget(user_id)
        if before:
            self.percentiles.move(before, dict.fromkeys(keys))
        if self.decision_log is not None:
            self.decision_log.forget(user_id)
        return deleted

    def close(self) -> None:
        """Save a last model snapshot (skipped with one warning when the store is gone: the
        next start replays the log from the previous one) and close the store."""
        try:
            self.learner.snapshot()
            self.learner.resign()
        except StoreUnavailable as err:
            log.warning("no final model snapshot, store unavailable: %s", err)
        finally:
            if self.decision_log is not None:
                self.decision_log.close()
            self.store.close()


def _impression_effects(fb: FeedbackInput, layout: str, decision: DecisionRecord,
                        profile: Profile | None) -> FeedbackEffects:
    """What a send's impression changes (:func:`~engine.feedback.feedback_effects`)."""
    return feedback_effects(fb, decision, profile, layout)
