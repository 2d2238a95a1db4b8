"""gRPC DecisionService: Decide(Batch), Feedback, TrackEvent(Batch), GetProfile, ForgetProfile.

Decide runs on the event loop: the checked request, the profile read (asynchronous,
coalesced with the other Decides of the same loop turn), the decision (synchronous and
short), the record write (group commit). The store waits are bounded by the store's
Decide timeout and by the RPC's deadline; when either runs out the decision is answered
degraded (an unknown customer, not recorded) instead of late. The other RPCs run their
store transactions off the loop (:mod:`engine.grpc.offload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

import grpc

from engine.decide.decision import Decision
from engine.feedback import FeedbackInput, feedback_effects
from engine.grpc import answers, convert
from engine.grpc.errors import rpc, status_of, throttled, time_left
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.offload import Offload
from engine.grpc.tracing import Tracing
from engine.ports import (
    DecideIO,
    DecisionNotFound,
    FeedbackChange,
    FeedbackCommit,
    ProfileChanged,
    Shown,
    StoreUnavailable,
)
from engine.records import CorruptRecord, DecisionRecord, Profile, decode_stored_profile
from engine.requests import (
    Aborted,
    DecideInput,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    check_id,
)
from engine.service import CONTENDED, SHOWN_ATTEMPTS, Arbiter
from engine.tracking import TrackPlan

log = logging.getLogger(__name__)

ShownWrite = tuple[DecisionRecord, float, str, FeedbackChange, str, bytes | None]
"""A record to store with its impression: record, TTL, the impression's idempotency key,
its change, its fingerprint, the customer's profile as read (what the write compares)."""
ShowDecisions = Callable[[Sequence[ShownWrite], float],
                         tuple[list[bool], Awaitable[list[Shown]]]]
"""A store's ``save_shown_decisions``."""

MAX_BATCH = 1000
"""Decisions per DecideBatch call."""
MAX_BATCH_ANSWER_BYTES = 3 << 20
"""A DecideBatch answer's size, about: past it the requests left are not decided but
answered RESOURCE_EXHAUSTED (send them again), so that the answer stays under the 4 MiB
a gRPC client receives by default (and the server sends) whatever the content rendered
(1,000 emails of 9 KB each are 9 MB)."""
TOO_OLD_TO_COUNT = ("at: decided, but older than the attribution window, so not recorded "
                    "and its impression not counted")
"""A DecideBatch result's ``error`` when ``record_impressions`` could not count it."""
BATCH_SLICE_SECONDS = 0.002
"""A batch's work on the loop (with the in-memory store, every decision and event of
it; with Redis, a wave's decisions) hands the loop back at least this often, so that a
Decide arriving meanwhile waits a slice, not the whole batch (1,000 decisions: ~50 ms)."""
NO_SPAN = contextlib.nullcontext()
FEEDBACK_STORE_SECONDS = 5.0
"""How long Feedback's transaction may wait for the store, within the deadline."""
RESPONSE_RESERVE_SECONDS = 0.002
"""Of the deadline, kept for deciding and answering after the store waits."""


class _Slices:
    """Turns on the loop for a batch: :meth:`share` yields once a slice has run."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = time.perf_counter() + BATCH_SLICE_SECONDS

    async def share(self) -> None:
        if time.perf_counter() >= self.until:
            await asyncio.sleep(0)  # what arrived meanwhile runs, then the batch goes on
            self.until = time.perf_counter() + BATCH_SLICE_SECONDS


class _AnswerRoom:
    """What a DecideBatch answer has used of :data:`MAX_BATCH_ANSWER_BYTES`: a decision
    is made only while one as large as the largest so far still fits (the first always
    is).

    >>> room = _AnswerRoom()
    >>> room.fits(), room.add(pb.DecideBatchResult(error="x" * 100)), room.used
    (True, None, 102)
    """

    __slots__ = ("largest", "used")

    def __init__(self) -> None:
        self.used = self.largest = 0

    def fits(self) -> bool:
        return self.used + self.largest <= MAX_BATCH_ANSWER_BYTES

    def add(self, result: pb.DecideBatchResult) -> None:
        size = result.ByteSize()
        self.used += size
        if size > self.largest:
            self.largest = size

    @staticmethod
    def refuse(result: pb.DecideBatchResult) -> Exception:
        """``result`` not decided: the answer is full."""
        return _refuse(result, ResourceExhausted(
            f"not decided: this call's answers reached {MAX_BATCH_ANSWER_BYTES:,} bytes; "
            "send the request again in another call"))


class _Made:
    """A decision of a wave: the request, its profile, what was decided and recorded."""

    __slots__ = ("aborted", "available", "decision", "digest", "i", "keep", "profile",
                 "record", "req")

    def __init__(self, i: int, req: DecideInput, digest: bytes, profile: Profile | None,
                 available: bool) -> None:
        self.i = i  # its place in the wave's requests
        self.req = req
        self.digest = digest  # its request id's fingerprint (b"": none)
        self.profile = profile
        self.available = available  # False: the profile could not be read (degraded)
        self.decision: Decision
        self.record: DecisionRecord
        self.keep = False  # its answer is kept with its record (a request id)
        self.aborted = False  # not recorded: its customer's profile kept changing


class _Wave:
    """A wave's decisions and what storing them takes, written in one round trip."""

    __slots__ = ("kept", "made", "requests", "results", "show", "showing", "shown",
                 "writes")

    def __init__(self, requests: list[pb.DecideRequest], results: list[pb.DecideBatchResult],
                 show: ShowDecisions | None, made: list[_Made] | None = None) -> None:
        self.requests, self.results = requests, results
        self.show = show  # the store's write of records with their impressions, if so
        self.made: list[_Made] = [] if made is None else made
        self.writes: list[tuple[DecisionRecord, float]] = []  # records alone
        self.shown: list[ShownWrite] = []  # records with their impressions
        self.showing: list[tuple[int, FeedbackInput]] = []  # (place in made, impression)
        self.kept: list[tuple[str, str, bytes, float]] = []  # request ids' answers


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, arbiter: Arbiter, offload: Offload, decide_io: DecideIO,
                 metrics: ServerMetrics | None = None, store_timeout: float = 0.5,
                 default_deadline: float = 10.0, tracing: Tracing | None = None) -> None:
        self.arbiter = arbiter
        self.offload = offload
        self.io = decide_io
        self.metrics = metrics
        self.store_timeout = store_timeout
        self.default_deadline = default_deadline
        self.tracing = tracing
        self._tasks: set[asyncio.Future[None]] = set()  # store calls not waited for
        self.untimed: frozenset[str] = (
            frozenset({"Decide"}) if offload.store_blocks or tracing is not None
            else frozenset({"Decide", "DecideBatch", "Feedback", "TrackEvent", "TrackEventBatch",
                            "GetProfile"}))
        """RPCs that need no deadline timer around them: those that run to their end
        without yielding to the loop (the in-memory store), and Decide, whose only waits
        (the profile read, the record write) each have a timer from the deadline and
        answer degraded when it fires (one timer per Decide fewer; a batch keeps its
        timer, which stops the decisions left when the deadline passes)."""

    def _span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """An OpenTelemetry span when tracing is on (engine.grpc.tracing), else nothing."""
        return NO_SPAN if self.tracing is None else self.tracing.span(name)

    @rpc
    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext
                     ) -> pb.DecideResponse:
        if request.request_id:
            return await self._decide_keyed(request)
        return convert.decide_response(await self._decide(request))

    @rpc
    async def DecideBatch(self, request: pb.DecideBatchRequest,
                          context: grpc.aio.ServicerContext) -> pb.DecideBatchResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument("requests", f"at most {MAX_BATCH} per call")
        response = pb.DecideBatchResponse()
        results = [response.results.add() for _ in request.requests]
        record = request.record_impressions
        room = _AnswerRoom()
        if not self.offload.store_blocks and not any(
                one.request_id for one in request.requests):  # in memory: nothing to overlap
            slices = _Slices()
            plain = self.tracing is None  # each one a decision (and its send), no await
            for one, result in zip(request.requests, results, strict=True):
                if not room.fits():  # this one and those after it: not decided
                    room.refuse(result)
                    continue
                if plain:
                    self._batch_plain(one, record, result)
                else:
                    await self._batch_one(one, record, result)
                room.add(result)
                if time.perf_counter() >= slices.until:
                    await slices.share()
            return response
        slices = _Slices()
        for wave in _waves(request.requests):  # one user's requests in order
            if not room.fits():  # (nothing read or claimed for them)
                for i in wave:
                    room.refuse(results[i])
                continue
            await self._decide_wave([request.requests[i] for i in wave],
                                    [results[i] for i in wave], record, slices, room)
        return response

    async def _decide_wave(self, requests: list[pb.DecideRequest],
                           results: list[pb.DecideBatchResult], record_impressions: bool,
                           slices: _Slices | None = None, room: _AnswerRoom | None = None
                           ) -> list[Exception | None]:
        """Distinct customers' decisions with one wait for their profiles (and the claims
        of their request ids) and one for their records (and kept answers), not one
        task, timer and pair of waits per decision: the same decisions, degraded together
        when the store fails or runs out of time. Returns each request's refusal (None:
        answered), also written to its result. ``room``: the batch's answer, which none
        is decided past (refused RESOURCE_EXHAUSTED, a claim of its request id dropped)."""
        arbiter = self.arbiter
        refused: list[Exception | None] = [None] * len(requests)
        checked: list[tuple[int, DecideInput, bytes]] = []  # (index, request, digest)
        for i, one in enumerate(requests):
            try:
                req = arbiter.decide_request(**_decide_arguments(one))
                digest = (answers.fingerprint(one)
                          if one.request_id and check_id("request_id", one.request_id)
                          else b"")
            except InvalidArgument as err:
                refused[i] = _refuse(results[i], err)
                continue
            checked.append((i, req, digest))
        if not checked:
            return refused
        users = [req.user_id for _, req, _ in checked]
        keyed = [(i, req.user_id, digest) for i, req, digest in checked if digest]
        claiming = self._claims(requests, keyed) if keyed else None  # sent with the reads
        # record_impressions on a store that writes a record with its outcome: those
        show = getattr(self.io, "save_shown_decisions", None) if record_impressions else None
        raw: list[bytes | None] | None = [] if show is not None else None  # as read
        profiles = await self._profiles(users, raw)
        claims = await claiming if claiming is not None else {}  # None: not asked in time
        wave = _Wave(requests, results, show)
        impressions = []
        released: list[tuple[str, str]] = []  # claims of this call's that keep no answer
        for j, ((i, req, digest), (profile, available)) in enumerate(
                zip(checked, profiles, strict=True)):
            result = results[i]
            if room is not None and not room.fits():  # the answer is full: not decided
                refused[i] = room.refuse(result)
                if digest and claims is not None and claims[i] is None:  # ours: dropped
                    released.append((req.user_id, requests[i].request_id))
                continue
            if digest:
                if claims is None:  # cannot tell what was answered: nothing kept
                    profile, available = None, False
                elif (held := claims[i]) is not None:  # answered (or being answered)
                    try:
                        result.decision.CopyFrom(answers.replay(held, digest))
                    except (Aborted, FailedPrecondition, CorruptRecord) as err:
                        refused[i] = _refuse(result, err)
                        continue
                    if self.metrics is not None:
                        self.metrics.answered_again.inc()
                    if room is not None:
                        room.add(result)
                    # its impression too: once per decision, and the first call may
                    # have stopped before recording it
                    if record_impressions and result.decision.actions:
                        impressions.append(self._record_impression(result))
                    continue
            if slices is not None:
                await slices.share()
            self._make(wave, _Made(i, req, digest, profile, available),
                       raw[j] if raw else None)
            if room is not None:
                room.add(result)
        made = wave.made
        counted: dict[int, tuple[FeedbackInput, FeedbackCommit]] = {}  # by place in made
        failed = await self._store_wave(wave, counted)
        for m, it in enumerate(made):
            i, req, decision = it.i, it.req, it.decision
            result = results[i]
            if it.aborted:  # nothing recorded (a kept answer too: its claim is dropped)
                result.decision.Clear()
                refused[i] = _refuse(result, Aborted(CONTENDED))
                if requests[i].request_id and claims is not None:
                    released.append((req.user_id, requests[i].request_id))
                continue
            decision = arbiter.finish_decide(req, decision, it.profile,
                                             it.available and m not in failed)
            if self.metrics is not None:
                self.metrics.decided(decision)
            if decision.degraded:  # (filled when made, as its kept answer is)
                result.decision.degraded = True
            # a claim of this call's that keeps no answer (nothing to record, or its
            # profile not read) is dropped; one it could not ask for is left alone (it
            # may be another's), and so is one whose write failed: it may yet have been
            # written (a reply too late: the record, its impression and the answer), and
            # a retry must then get that answer; else the claim lapses after its hold
            if requests[i].request_id and claims is not None and not it.keep:
                released.append((req.user_id, requests[i].request_id))
            if m in counted:  # stored with its record (degraded or not: it is stored)
                self._counted(*counted[m])
            elif record_impressions and decision.actions and not decision.degraded:
                impressions.append(self._record_impression(result, it.record))
        if released:  # kept nothing: a retry decides again (sent now, not waited for)
            self._background(self.io.release_requests(released))
        if impressions:
            await asyncio.gather(*impressions)
        return refused

    def _make(self, wave: _Wave, one: _Made, as_read: bytes | None,
              place: int | None = None) -> None:
        """Decide ``one`` on its profile and queue what storing it takes on ``wave``:
        its record (with its impression when the wave shows what it decides; ``as_read``:
        the profile as stored, which that write compares), its kept answer. ``place``: the
        decision it replaces in ``wave.made`` (made again on a newer profile)."""
        arbiter = self.arbiter
        one.decision, one.record = decision, record = self._decide_from(one.req, one.profile)
        ttl = arbiter.record_ttl(record)
        result = wave.results[one.i]
        if place is None:
            place = len(wave.made)
            wave.made.append(one)
        else:  # (what the first decision filled in goes)
            wave.made[place] = one
            result.decision.Clear()
        convert.fill_decide_response(result.decision, decision)  # (its size counts now)
        if ttl is None or not one.available:
            return
        if wave.show is not None and decision.actions:  # stored with its impression
            fb = arbiter.impression_input(record)
            wave.shown.append((record, ttl, fb.key, self._effects(fb), fb.fingerprint,
                               as_read))
            wave.showing.append((place, fb))
        else:
            wave.writes.append((record, ttl))
        if one.digest:  # the answer as it will be sent, kept with the record
            wave.kept.append((one.req.user_id, wave.requests[one.i].request_id,
                              answers.answer(one.digest, result.decision), ttl))
            one.keep = True

    async def _store_wave(self, wave: _Wave,
                          counted: dict[int, tuple[FeedbackInput, FeedbackCommit]]
                          ) -> Container[int]:
        """Write what the wave queued, in one round trip; a decision whose customer's
        profile changed before its record and impression were stored (nothing stored) is
        made again on the profile as it is now, up to ``SHOWN_ATTEMPTS`` times, so that
        caps hold for campaigns sending to one customer at once; then it is marked
        ``aborted``. Returns the places in ``wave.made`` of the decisions whose writes
        failed (all of them when the first did; else those made again, or stored plainly,
        in the round trip that failed)."""
        failed: set[int] = set()
        attempt, places = 1, None  # (places in this round trip: None, every decision)
        while wave.writes or wave.shown or wave.kept:
            budget = self._budget(RESPONSE_RESERVE_SECONDS)
            writes, showing, sending = wave.writes, wave.showing, None
            if wave.show is not None and wave.shown:
                went, sending = wave.show(wave.shown, budget)
                writes += [(r, ttl) for (r, ttl, *_), ok in zip(wave.shown, went, strict=True)
                           if not ok]  # stored plainly, the impression as a Feedback
                showing = [one for one, ok in zip(showing, went, strict=True) if ok]
            keeping = self.io.save_answers(wave.kept, budget) if wave.kept else None
            changed: list[tuple[int, ProfileChanged | None]] = []
            stored = True
            with self._span("store.record_write"):
                if writes:
                    stored = await self._store(self.io.save_decisions(writes, budget),
                                               "write")
                if sending is not None:
                    stored = await self._shown(sending, showing, counted, changed) and stored
                if keeping is not None:
                    stored = await self._store(keeping, "write") and stored
            if not stored:
                if places is None:
                    return range(len(wave.made))
                failed.update(places)
            if not changed:
                break
            again = _Wave(wave.requests, wave.results, wave.show, wave.made)
            places = [place for place, _ in changed]
            for place, why in changed:
                before = wave.made[place]
                now = why.profile if why is not None else None
                profile = decode_stored_profile(now) if now is not None else None
                if why is None or isinstance(profile, CorruptRecord):  # stored plainly,
                    again.writes.append((before.record, self.arbiter.record_ttl(  # its
                        before.record) or 1.0))  # impression as a Feedback (which says
                    continue                     # what is wrong)
                if attempt >= SHOWN_ATTEMPTS:
                    before.aborted = True  # nothing stored: the caller sends it again
                    self._contended("aborted")
                    continue
                self._contended("again")
                self._make(again, _Made(before.i, before.req, before.digest, profile, True),
                           now, place)
            wave, attempt = again, attempt + 1
        return failed

    def _contended(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.sends_contended.labels(outcome).inc()

    def _effects(self, fb: FeedbackInput) -> FeedbackChange:
        layout = self.arbiter.profile_layout
        return lambda d, p: feedback_effects(fb, d, p, layout)

    async def _shown(self, sending: Awaitable[list[Shown]],
                     showing: list[tuple[int, FeedbackInput]],
                     counted: dict[int, tuple[FeedbackInput, FeedbackCommit]],
                     changed: list[tuple[int, ProfileChanged | None]]) -> bool:
        """Wait for the records stored with their impressions: each stored one's commit
        into ``counted``, each not stored into ``changed`` (with the profile as it is now
        when that was why). False when the write failed."""
        started = time.perf_counter()
        try:
            commits = await sending
        except StoreUnavailable as err:
            self._store_failed("write", err, started)
            return False
        if self.metrics is not None:
            self.metrics.store("write", time.perf_counter() - started)
        for (place, fb), commit in zip(showing, commits, strict=True):
            if isinstance(commit, FeedbackCommit):
                counted[place] = (fb, commit)
            else:
                changed.append((place, commit))
        return True

    def _counted(self, fb: FeedbackInput, commit: FeedbackCommit) -> None:
        """What follows an impression stored with its record (as a Feedback's)."""
        arbiter = self.arbiter
        moved = arbiter.feedback_applied(fb, commit)
        if moved and (due := arbiter.experiments.due(moved)):  # (a burst: one re-read)
            self.offload.spawn(arbiter.experiments.refresh, due)

    def _claims(self, requests: list[pb.DecideRequest], keyed: list[tuple[int, str, bytes]]
                ) -> Awaitable[dict[int, bytes | None] | None]:
        """Each keyed request's claim, sent now: what is kept for its id, None when this
        call claimed it; None for all when the store could not be asked in time."""
        started = time.perf_counter()
        claiming = self.io.claim_requests(
            [(user, requests[i].request_id, answers.claim(digest))
             for i, user, digest in keyed],
            answers.hold_seconds(time_left()), self._budget(0.0, share=0.5))
        return self._claimed(keyed, claiming, started)

    async def _claimed(self, keyed: list[tuple[int, str, bytes]],
                       claiming: Awaitable[list[bytes | None]], started: float
                       ) -> dict[int, bytes | None] | None:
        try:
            held = await claiming
        except StoreUnavailable as err:
            self._store_failed("read", err, started)
            return None
        return {i: one for (i, _, _), one in zip(keyed, held, strict=True)}

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _profiles(self, user_ids: list[str], raw: list[bytes | None] | None = None
                        ) -> list[tuple[Profile | None, bool]]:
        """Each customer's profile and True; (None, False) for all when the store could
        not be read in time, and for a corrupt one alone (those decisions go on as for
        unknown customers, degraded). ``raw``, with a store that reads them: filled with
        the profiles as stored (what a compare-and-set compares)."""
        started = time.perf_counter()
        read_raw = getattr(self.io, "get_profile_bytes", None) if raw is not None else None
        budget = self._budget(0.0, share=0.5)  # the record writes need some time too
        try:
            with self._span("store.profile_read"):
                if read_raw is not None and raw is not None:
                    raw += await read_raw(user_ids, budget)
                    found = [decode_stored_profile(data) for data in raw]
                else:
                    found = await self.io.get_profiles(user_ids, budget)
        except StoreUnavailable as err:
            self._store_failed("read", err, started)
            return [(None, False)] * len(user_ids)
        if self.metrics is not None:
            self.metrics.store("read", time.perf_counter() - started)
        profiles: list[tuple[Profile | None, bool]] = []
        for profile in found:
            if isinstance(profile, CorruptRecord):  # ForgetProfile heals it
                throttled.warning("decide:corrupt", "decide degraded: %s", profile)
                profiles.append((None, False))
            else:
                profiles.append((profile, True))
        return profiles

    def _batch_plain(self, one: pb.DecideRequest, record_impressions: bool,
                     result: pb.DecideBatchResult) -> None:
        """A batch's decision without a request id on the in-memory store, untraced:
        nothing in it waits (with ``record_impressions`` the record and its send are
        stored in one step), so no coroutine per decision."""
        arbiter = self.arbiter
        try:
            if record_impressions:
                decision, counted = arbiter.decide_shown(
                    arbiter.decide_request(**_decide_arguments(one)))
            else:
                decision, counted = arbiter.decide(**_decide_arguments(one)), True
        except (InvalidArgument, Aborted, FailedPrecondition, CorruptRecord) as err:
            _refuse(result, err)
            return
        if self.metrics is not None:
            self.metrics.decided(decision)
        convert.fill_decide_response(result.decision, decision)
        if decision.actions and not decision.degraded and not counted:
            result.error = TOO_OLD_TO_COUNT

    async def _batch_one(self, one: pb.DecideRequest, record_impressions: bool,
                         result: pb.DecideBatchResult) -> None:
        """A batch's decision on the in-memory store when tracing is on (its spans), the
        impression recorded after it (else :meth:`_batch_plain`)."""
        try:
            if one.request_id:
                result.decision.CopyFrom(await self._decide_keyed(one))
            else:
                convert.fill_decide_response(result.decision, await self._decide(one))
        except (InvalidArgument, Aborted, FailedPrecondition, CorruptRecord) as err:
            _refuse(result, err)
            return
        decided = result.decision
        # an answer given again (duplicate) too: its impression counts once per decision
        # and action, and the first call may have stopped before recording it
        if record_impressions and decided.actions and not decided.degraded:
            await self._record_impression(result)

    async def _record_impression(self, result: pb.DecideBatchResult,
                                 made: DecisionRecord | None = None) -> None:
        """DecideBatch's ``record_impressions``: the first action counted as shown (once
        per decision: a repeat is a duplicate of the first), at the decision's time, as
        :meth:`~engine.service.Arbiter.impression_input`. ``made``: the record as this
        call just stored it (the store need not read it back)."""
        decided = result.decision
        at = (made.decided_at if made is not None
              else decided.decided_at.seconds + decided.decided_at.nanos / 1e9)
        try:
            await self._commit_feedback(
                made, decision_id=decided.decision_id,
                action_id=decided.actions[0].action_id, outcome="impression", at=at)
        except DecisionNotFound:  # decided for a time past the attribution window
            result.error = TOO_OLD_TO_COUNT
        except CorruptRecord as err:  # the customer's profile alone: the batch goes on,
            _refuse(result, err)      # this decision answered with why it is not counted

    async def _decide(self, request: pb.DecideRequest) -> Decision:
        arbiter = self.arbiter
        if not self.offload.store_blocks and self.tracing is None:
            # in-memory store: the library's own synchronous decide, inline
            decision = arbiter.decide(**_decide_arguments(request))
        else:
            decision = await self._decide_async(arbiter.decide_request(
                **_decide_arguments(request)))
        if self.metrics is not None:
            self.metrics.decided(decision)
        return decision

    async def _decide_async(self, req: DecideInput) -> Decision:
        """Profile read and record write awaited on the store's DecideIO, the decision in
        between: the loop serves other requests while the store answers."""
        arbiter = self.arbiter
        with self._span("store.profile_read"):
            profile, available = await self._profile(req.user_id)
        decision, record = self._decide_from(req, profile)
        stored = True
        ttl = arbiter.record_ttl(record)
        if ttl is not None and available:  # degraded already: not recorded, no more waiting
            with self._span("store.record_write"):
                stored = await self._store(self.io.save_decision(
                    record, ttl, self._budget(RESPONSE_RESERVE_SECONDS)), "write")
        return arbiter.finish_decide(req, decision, profile, available and stored)

    async def _decide_keyed(self, request: pb.DecideRequest) -> pb.DecideResponse:
        """A Decide with a ``request_id`` (engine.grpc.answers): the answer kept for it,
        or a new decision whose answer is kept with its record (one round trip).
        Degraded answers are not kept: the claim is dropped, and a retry decides again."""
        result = pb.DecideBatchResult()
        (refused,) = await self._decide_wave([request], [result], False)
        if refused is not None:
            raise refused
        return result.decision

    def _decide_from(self, req: DecideInput, profile: Profile | None
                     ) -> tuple[Decision, DecisionRecord]:
        """The decision and its record (traced when tracing is on)."""
        if self.tracing is None:
            return self.arbiter.decide_from(req, profile)
        return self._traced_decide(self.tracing, req, profile)

    def _traced_decide(self, tracing: Tracing, req: DecideInput, profile: Profile | None
                       ) -> tuple[Decision, DecisionRecord]:
        with tracing.span("decide") as span:
            stages = tracing.stages()
            decision, record = self.arbiter.decide_from(req, profile, stages)
            if stages is not None:
                stages.finish()
            tracing.describe(span, decision)
        return decision, record

    async def _profile(self, user_id: str) -> tuple[Profile | None, bool]:
        started = time.perf_counter()
        try:  # half the time left at most: the record write needs some too
            profile = await self.io.get_profile(user_id, self._budget(0.0, share=0.5))
        except StoreUnavailable as err:
            self._store_failed("read", err, started)
            return None, False
        except CorruptRecord as err:  # as an unknown customer, degraded; ForgetProfile heals
            throttled.warning("decide:corrupt", "decide degraded: %s", err)
            return None, False
        if self.metrics is not None:
            self.metrics.store("read", time.perf_counter() - started)
        return profile, True

    async def _store(self, write: Awaitable[None], op: str) -> bool:
        started = time.perf_counter()
        try:
            await write
        except StoreUnavailable as err:
            self._store_failed(op, err, started)
            return False
        if self.metrics is not None:
            self.metrics.store(op, time.perf_counter() - started)
        return True

    def _store_failed(self, op: str, err: StoreUnavailable, started: float) -> None:
        throttled.warning(f"decide:{op}", "decide degraded (%s): %s", op, err)
        if self.metrics is not None:
            self.metrics.store(op, time.perf_counter() - started, failed=True)

    def _budget(self, reserve: float, share: float = 1.0,
                store_timeout: float | None = None) -> float:
        """How long a store call may wait: the store's timeout (Decide's, unless given),
        within the deadline (less a tenth of what is left, and ``reserve``, for answering)."""
        limit = self.store_timeout if store_timeout is None else store_timeout
        return min(limit, time_left() * share * 0.9 - reserve)

    @rpc
    async def Feedback(self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext
                       ) -> pb.FeedbackResponse:
        outcome = convert.OUTCOME_NAMES.get(request.outcome)
        if outcome is None:
            raise InvalidArgument("outcome", "must be set: OUTCOME_IMPRESSION, OUTCOME_CLICK, "
                                             "OUTCOME_CONVERSION or OUTCOME_DISMISS")
        with self._span("store.feedback"):
            commit = await self._feedback(request, outcome)
        return pb.FeedbackResponse(duplicate=commit.duplicate)

    async def _feedback(self, request: pb.FeedbackRequest, outcome: str) -> FeedbackCommit:
        return await self._commit_feedback(
            None, decision_id=request.decision_id, action_id=request.action_id, outcome=outcome,
            value=request.value if request.HasField("value") else None,
            idempotency_key=request.idempotency_key,
            at=convert.optional_time(request, "timestamp"), item_id=request.item_id)

    async def _commit_feedback(self, made: DecisionRecord | None, **feedback: Any
                               ) -> FeedbackCommit:
        """An outcome, stored once: with a network store whose DecideIO offers it, the
        compare-and-set awaited on the loop (no thread), the experiments' counters it
        moved re-read on a worker thread, not waited for; otherwise the library call.
        ``made``: the decision's record if this process just stored it (its first
        attempt then reads nothing: a stale guess fails the compare-and-set, and it
        reads)."""
        commit_async = getattr(self.io, "commit_feedback", None)
        if commit_async is None or not self.offload.store_blocks:
            return await self.offload.store(self.arbiter.feedback, **feedback)
        arbiter = self.arbiter
        fb = arbiter.feedback_input(**feedback)
        commit: FeedbackCommit = await commit_async(
            fb.decision_id, fb.key,
            self._effects(fb),
            arbiter.attribution_window, fb.fingerprint,
            self._budget(RESPONSE_RESERVE_SECONDS, store_timeout=FEEDBACK_STORE_SECONDS),
            made=made)
        self._counted(fb, commit)
        return commit

    def _types(self) -> dict[str, str]:
        return {k: v.type for k, v in self.arbiter.ruleset.profile_schema.items()}

    @rpc
    async def TrackEvent(self, request: pb.TrackEventRequest,
                         context: grpc.aio.ServicerContext) -> pb.TrackEventResponse:
        with self._span("store.track"):
            plan, profile = await self._track(request)
        return pb.TrackEventResponse(
            profile=convert.profile_message(profile, self.arbiter.clock(), self._types()),
            duplicate=plan.duplicate)

    async def _track(self, request: pb.TrackEventRequest) -> tuple[TrackPlan, Profile]:
        """One TrackEvent checked and stored: its plan (``duplicate``) and the profile."""
        plan = self.arbiter.track_plan(
            user_id=request.user_id, event_type=request.event_type,
            properties=convert.from_values("properties", request.properties),
            traits=convert.from_values("traits", request.traits),
            at=convert.optional_time(request, "timestamp"), item_id=request.item_id,
            event_id=request.event_id)
        update_async = getattr(self.io, "update_profile", None)
        if update_async is not None and self.offload.store_blocks:
            # the store's transaction awaited on the loop (no thread)
            return plan, self.arbiter.track_applied(plan, await update_async(
                plan.user_id, plan.change, plan.learning,
                self._budget(RESPONSE_RESERVE_SECONDS, store_timeout=FEEDBACK_STORE_SECONDS)))
        return plan, await self.offload.store(self.arbiter.track_stored, plan)

    @rpc
    async def TrackEventBatch(self, request: pb.TrackEventBatchRequest,
                              context: grpc.aio.ServicerContext) -> pb.TrackEventBatchResponse:
        """Each event as TrackEvent applies it, concurrently on the store's round trips
        (a customer's events in request order: their updates queue in the order they
        start) or else in turn; an event's own failure is its result."""
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument("events", f"at most {MAX_BATCH} per call")
        response = pb.TrackEventBatchResponse()
        results = [response.results.add() for _ in request.events]
        with self._span("store.track"):
            if self.offload.store_blocks and hasattr(self.io, "update_profile"):
                # each customer's updates take turns in DecideIO in the order they start
                await asyncio.gather(*(self._track_one(event, result) for event, result
                                       in zip(request.events, results, strict=True)))
            else:
                slices = _Slices()
                for event, result in zip(request.events, results, strict=True):
                    await self._track_one(event, result)
                    await slices.share()
        return response

    async def _track_one(self, event: pb.TrackEventRequest,
                         result: pb.TrackEventBatchResult) -> None:
        try:
            plan, _ = await self._track(event)
        except (InvalidArgument, FailedPrecondition, StoreUnavailable, CorruptRecord) as err:
            code, message = status_of(err, "TrackEventBatch")
            result.status, result.error = code.name, message
            return
        result.duplicate = plan.duplicate

    @rpc
    async def GetProfile(self, request: pb.GetProfileRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetProfileResponse:
        if self.offload.store_blocks:  # the store's read awaited on the loop
            check_id("user_id", request.user_id)
            profile = await self.io.get_profile(
                request.user_id, self._budget(RESPONSE_RESERVE_SECONDS))
        else:
            profile = self.arbiter.get_profile(request.user_id)
        if profile is None:
            return pb.GetProfileResponse(found=False)
        learnt = self.arbiter.learnt_values(profile)
        return pb.GetProfileResponse(found=True, profile=convert.profile_message(
            profile, self.arbiter.clock(), self._types(), learnt))

    @rpc
    async def ForgetProfile(self, request: pb.ForgetProfileRequest,
                            context: grpc.aio.ServicerContext) -> pb.ForgetProfileResponse:
        # always on a worker thread, whatever the store: it waits for the decision log to
        # erase the user's lines (a pass over its file), which must not hold the loop
        deleted = await self.offload.thread(self.arbiter.forget, request.user_id)
        return pb.ForgetProfileResponse(deleted=deleted)


def _refuse(result: pb.DecideBatchResult, err: Exception) -> Exception:
    """A request of a batch refused: its status and message in its result."""
    code, message = status_of(err, "DecideBatch")
    result.error, result.status = message, code.name
    return err


def _decide_arguments(request: pb.DecideRequest) -> dict[str, Any]:
    return {
        "user_id": request.user_id,
        "placement": request.placement,
        "channel": request.channel,
        "context": convert.from_values("context", request.context),
        "limit": request.limit,
        "explain": request.explain,
        "at": convert.optional_time(request, "at"),
    }


def _waves(requests: Sequence[pb.DecideRequest]) -> list[list[int]]:
    """Indexes in waves, each user at most once per wave and in request order: a batch
    decides concurrently but one customer's decisions in sequence (caps see the earlier).

    >>> class R:
    ...     def __init__(self, u): self.user_id = u
    >>> _waves([R("a"), R("b"), R("a"), R("c"), R("a")])
    [[0, 1, 3], [2], [4]]
    """
    seen: defaultdict[str, int] = defaultdict(int)
    waves: list[list[int]] = []
    for i, one in enumerate(requests):
        n = seen[one.user_id]
        seen[one.user_id] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(i)
    return waves
