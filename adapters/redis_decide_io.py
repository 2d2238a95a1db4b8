"""Decide's, Feedback's and TrackEvent's Redis I/O on redis-py's asyncio client.

Decide's profile reads and decision records go by group commit
(:class:`~adapters.redis_round_trips.RoundTrips` on a client with Decide's short
timeouts); TrackEvent's profile updates and Feedback's reads and script likewise, each
a compare-and-set, on a client with the store's ordinary timeouts. Each caller still
waits for its own read or write (acknowledged means stored) and for no longer than its
own ``timeout``: past it, or when Redis cannot be reached, the call raises
:class:`~engine.ports.StoreUnavailable` (and a decision is answered degraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from adapters.redis_connect import async_client
from adapters.redis_feedback import feedback_steps, run_batched
from adapters.redis_round_trips import FAILURES, RoundTrips
from adapters.redis_scripts import CLAIM_REQUESTS, MAX_COMMIT_ATTEMPTS, SAVE_ANSWERS
from engine.ports import (
    FeedbackChange,
    FeedbackCommit,
    Learning,
    ProfileChanged,
    Shown,
    StoreUnavailable,
    answer_key,
)
from engine.records import (
    CorruptRecord,
    DecisionRecord,
    Profile,
    decode_profile,
    decode_stored_profile,
    encode,
    encode_event,
)

if TYPE_CHECKING:
    from adapters.redis_store import RedisStore, ShownWrite


class RedisDecideIO:
    """:class:`~engine.ports.DecideIO` on the same Redis, keys and profile cache as a
    :class:`~adapters.redis_store.RedisStore`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        timeout = store.decide_timeout
        self.redis = async_client(store.url, store.ns, socket_timeout=timeout,
                                  socket_connect_timeout=timeout, health_check_interval=30)
        # TrackEvent's and Feedback's round trips: the store's ordinary timeouts, not Decide's
        self.writer = async_client(store.url, store.ns, socket_timeout=5,
                                   socket_connect_timeout=5,
                                   health_check_interval=30)
        self._decide = RoundTrips(store, self.redis, store.batch_linger, timeout)
        self._track = RoundTrips(store, self.writer, store.batch_linger,
                                 store.replica_timeout)
        self._turns: dict[str, _Turn] = {}  # customers with an update in flight

    @property
    def round_trips(self) -> int:
        """Round trips sent for Decide and TrackEvent (fewer than the calls: the batching
        works)."""
        return self._decide.count + self._track.count

    # ---- Feedback: the store's compare-and-set, on the shared round trips -----------------
    async def commit_feedback(self, decision_id: str, idempotency_key: str,
                              change: FeedbackChange, ttl_seconds: float, fingerprint: str,
                              timeout: float, made: DecisionRecord | None = None
                              ) -> FeedbackCommit:
        """:meth:`RedisStore.commit_feedback <adapters.redis_store.RedisStore.commit_feedback>`
        on the shared round trips (its two reads and its script each riding with the other
        calls in flight): the same keys and the same all-or-nothing write;
        StoreUnavailable past ``timeout`` (the script may or may not have run: a retry
        with the same key is answered as a duplicate). ``made``: the decision's record as
        this process just stored it; with its customer's profile in the in-process
        cache, the first attempt takes them for what it would read (DecideBatch's
        impressions: one script instead of two reads and a script; a guess that is
        stale fails the compare-and-set, and the next attempt reads)."""
        if timeout <= 0:
            raise StoreUnavailable("redis: no time left for the feedback")
        guess = None
        if made is not None:
            hit, profile = self.store.cached_profile(made.user_id)
            if hit:
                guess = (self.store.record_bytes(made), made, profile)
        try:
            async with asyncio.timeout(timeout):
                commit = await run_batched(
                    feedback_steps(self.store, decision_id, idempotency_key, change,
                                   ttl_seconds, fingerprint, guess), self._track)
                if commit.duplicate:  # the first may not have been replicated yet
                    await self.replicated()
                return commit
        except TimeoutError:
            raise StoreUnavailable(f"redis: feedback took longer than {timeout:.3f}s"
                                   ) from None
        except FAILURES as err:
            raise StoreUnavailable(f"redis: {err}") from err

    async def update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                             learning: Learning | None, timeout: float) -> Profile:
        """:meth:`RedisStore.update_profile <adapters.redis_store.RedisStore.update_profile>`
        (the profile and its learning-log entry, all or nothing) on the asyncio client,
        as a compare-and-set that rides the shared round trips: the profile is read with
        the next MGET (or taken from the in-process cache), changed, and written by the
        next round trip's ``UPDATE_PROFILES`` script if it is still as read; else read
        again and retried. StoreUnavailable past ``timeout`` (the update may or may not
        have been applied)."""
        if timeout <= 0:
            raise StoreUnavailable("redis: no time left for the profile update")
        try:
            async with asyncio.timeout(timeout):
                return await self._update_profile(user_id, change, learning)
        except TimeoutError:
            raise StoreUnavailable(f"redis: profile update took longer than {timeout:.3f}s"
                                   ) from None
        except FAILURES as err:
            raise StoreUnavailable(f"redis: {err}") from err

    async def _update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                              learning: Learning | None) -> Profile:
        # one update per customer in flight from this process: the next starts from the
        # profile the last one wrote (cached), so this process's own updates of a busy
        # customer never conflict (updates from other replicas may: read again, retry)
        turn = self._turns.get(user_id)
        if turn is None:
            turn = self._turns[user_id] = _Turn()
        turn.waiting += 1
        try:
            async with turn.lock:
                return await self._update_in_turn(user_id, change, learning)
        finally:
            turn.waiting -= 1
            if not turn.waiting:
                del self._turns[user_id]

    async def _update_in_turn(self, user_id: str, change: Callable[[Profile | None], Profile],
                              learning: Learning | None) -> Profile:
        cached, data = self.store.cached_profile(user_id)  # if stale: one retry more
        for _ in range(MAX_COMMIT_ATTEMPTS):
            if not cached:
                data = await self._track.read(user_id)
            cached = False
            profile = change(decode_profile(data) if data is not None else None)
            stored = encode(profile)
            if stored == data:  # nothing changed (an event applied before: what was read
                return profile  # had stored it), so nothing to write
            event = learning(profile) if learning is not None else None
            if await self._track.update(user_id, data, stored,
                                        encode_event(event) if event is not None else None):
                return profile
        raise StoreUnavailable(f"profile of {user_id}: still conflicting after "
                               f"{MAX_COMMIT_ATTEMPTS} attempts")

    async def replicated(self) -> None:
        """:meth:`RedisStore.replicated <adapters.redis_store.RedisStore.replicated>` on
        the shared round trips (a marker write confirmed by the round trip's ``WAIT``)."""
        store = self.store
        if store.replicas > 0:
            await self._track.command("SET", f"{store.ns}:replicated", time.time(),
                                      waited=True)

    # ---- profiles and records: one pipeline in flight, carrying all that waits -------------
    async def get_profile(self, user_id: str, timeout: float) -> Profile | None:
        hit, data = self.store.cached_profile(user_id)
        if not hit:
            data = await _within(self._decide.read(user_id), timeout, "profile read")
        return decode_profile(data) if data is not None else None

    async def save_decision(self, record: DecisionRecord, ttl_seconds: float,
                            timeout: float) -> None:
        await _within(self._decide.write(((record, ttl_seconds),)), timeout,
                      "decision record write")

    async def get_profiles(self, user_ids: Sequence[str], timeout: float
                           ) -> list[Profile | CorruptRecord | None]:
        """The profiles in one wait, read with whatever else the next round trip
        carries (the cached ones from the cache)."""
        return [decode_stored_profile(data)
                for data in await self.get_profile_bytes(user_ids, timeout)]

    async def get_profile_bytes(self, user_ids: Sequence[str], timeout: float
                                ) -> list[bytes | None]:
        """:meth:`get_profiles` as stored (None: none), not decoded: what a
        compare-and-set of them compares (:meth:`save_shown_decisions`)."""
        found: list[bytes | asyncio.Future[bytes | None] | None] = []
        waiting: list[asyncio.Future[bytes | None]] = []
        for user_id in user_ids:
            hit, data = self.store.cached_profile(user_id)
            if hit:
                found.append(data)
                continue
            waiter = self._decide.read(user_id)
            found.append(waiter)
            waiting.append(waiter)
        if waiting:
            await _within(asyncio.gather(*waiting), timeout, "profile reads")
        return [item.result() if isinstance(item, asyncio.Future) else item
                for item in found]

    async def save_decisions(self, writes: Sequence[tuple[DecisionRecord, float]],
                             timeout: float) -> None:
        """The records in the next round trip (one command), one wait for all."""
        if not writes:
            return
        await _within(self._decide.write(writes), timeout, "decision record writes")

    # ---- Decide request ids: on Decide's round trips, with the reads and records ---------
    def claim_requests(self, claims: Sequence[tuple[str, str, bytes]],
                       hold_seconds: float, timeout: float
                       ) -> Awaitable[list[bytes | None]]:
        """One script for all (``CLAIM_REQUESTS``), queued now for the next round trip."""
        prefix = self.store.ns_bytes + b":k:"
        keys = [prefix + answer_key(user, request_id).encode()
                for user, request_id, _ in claims]
        return _held(self._decide.command(
            "EVAL", CLAIM_REQUESTS, len(keys), *keys, b"%d" % max(1, int(hold_seconds * 1000)),
            *(pending for _, _, pending in claims), companion=True), timeout)

    def save_answers(self, answers: Sequence[tuple[str, str, bytes, float]],
                     timeout: float) -> Awaitable[None]:
        """One script for all (``SAVE_ANSWERS``), queued now for the next round trip."""
        ns = self.store.ns_bytes
        keys: list[bytes] = []
        args: list[bytes] = []
        for user, request_id, answer, ttl_seconds in answers:
            name = answer_key(user, request_id).encode()
            keys += (b"%s:k:%s" % (ns, name), b"%s:ukz:%s" % (ns, user.encode()))
            args += (answer, b"%d" % max(1, int(ttl_seconds * 1000)), name)
        return _within(self._decide.command("EVAL", SAVE_ANSWERS, len(keys), *keys, *args,
                                            waited=True, companion=True), timeout,
                       "answer writes")

    def release_requests(self, keys: Sequence[tuple[str, str]]) -> Awaitable[None]:
        """One ``DEL``, queued now for the next round trip (so before any later claim)."""
        names = [self.store.key("k", answer_key(user, rid)) for user, rid in keys]
        return _released(self._decide.command("DEL", *names), self.store.decide_timeout)

    # ---- DecideBatch's record_impressions: each record stored with its outcome ------------
    def save_shown_decisions(self, shown: Sequence[tuple[DecisionRecord, float, str,
                                                         FeedbackChange, str, bytes | None]],
                             timeout: float
                             ) -> tuple[list[bool], Awaitable[list[Shown]]]:
        """New records (record, TTL, the outcome's idempotency key, its change, its
        fingerprint, the customer's profile as read by :meth:`get_profile_bytes`), each
        stored with its first outcome's effects by one script (``SAVE_SHOWN_DECISIONS``)
        queued now for the next round trip: no record written and then read back and
        rewritten, no script per outcome. The effects are computed here, and the script
        applies each only if the profile is still as read. Returns which records went
        (False: the outcome cannot apply; the caller stores the record and commits the
        outcome as a Feedback, which says why) and, for those, each one's commit; or,
        nothing stored, :class:`ProfileChanged` with the profile as it is now (the caller
        decides again on it: the caps see what was sent meanwhile), or None (its record
        or key existed: stored plainly and committed as a Feedback)."""
        included: list[bool] = []
        writes: list[ShownWrite] = []
        for record, ttl, key, change, fingerprint, pdata in shown:
            try:  # on copies: the caller's record and profile stay as they were decided
                effects = change(msgspec.structs.replace(record, outcomes={}),
                                 decode_profile(pdata) if pdata is not None else None)
            except (LookupError, ValueError):  # (CorruptRecord too: a Feedback says it)
                included.append(False)
                continue
            included.append(True)
            writes.append((effects, ttl, key, fingerprint, pdata))
        if not writes:
            return included, _nothing()
        sent = self._decide.command("EVAL", *self.store.shown_decisions_command(writes),
                                    waited=True, companion=True)
        return included, self._shown(sent, writes, timeout)

    async def _shown(self, sent: asyncio.Future[Any], writes: list[ShownWrite],
                     timeout: float) -> list[Shown]:
        replies = await _within(sent, timeout, "decision record writes")
        commits: list[Shown] = []
        for (effects, *_), stored in zip(writes, replies, strict=True):
            if isinstance(stored, bytes):  # its profile changed: as it is now
                now = stored[1:] if stored[:1] == b"1" else None
                self.store.remember_profile(effects.decision.user_id, now)
                commits.append(ProfileChanged(now))
                continue
            if not stored:
                commits.append(None)
                continue
            if effects.profile is not None:
                self.store.remember_profile(effects.decision.user_id, encode(effects.profile))
            commits.append(FeedbackCommit(False, effects))
        return commits

    async def ping(self, timeout: float) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout))
        except (TimeoutError, *FAILURES):
            return False

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.writer.aclose()


class _Turn:
    """A customer's profile updates in this process, one at a time."""

    __slots__ = ("lock", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0


async def _released(waiter: asyncio.Future[Any], timeout: float) -> None:
    with contextlib.suppress(StoreUnavailable):  # a claim left lapses after its hold
        await _within(waiter, timeout, "request id release")


async def _held(waiter: asyncio.Future[list[Any]], timeout: float) -> list[bytes | None]:
    held = await _within(waiter, timeout, "request id claims")
    return [None if one is None else bytes(one) for one in held]


async def _nothing() -> list[Shown]:
    return []


async def _within(waiter: asyncio.Future[Any], timeout: float, what: str) -> Any:
    """The waiter's result, or StoreUnavailable after ``timeout`` seconds. (A timer that
    fails the waiter: the waiter is this call's own, so ``asyncio.wait_for``'s extra
    future and cancellation handshake are not needed on every read and write.)"""
    if timeout <= 0:
        waiter.cancel()
        raise StoreUnavailable(f"redis: no time left for the {what}")
    timer = waiter.get_loop().call_later(timeout, _expire, waiter, timeout, what)
    try:
        return await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[Any], timeout: float, what: str) -> None:
    if not waiter.done():  # the round trip answers it later, or never: it is skipped then
        waiter.set_exception(StoreUnavailable(
            f"redis: {what} took longer than {timeout:.3f}s"))
