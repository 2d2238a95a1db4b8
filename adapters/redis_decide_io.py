"""Decide's Redis I/O on redis-py's asyncio client: coalesced reads, group-committed records.

A server's event loop runs many Decides at once. Their Redis work is batched the way
databases group their commits: one pipeline is in flight at a time, and everything that
arrives while it is out (the profile reads that miss the in-process cache, as one MGET,
and the decision records to write) goes in the next one. With no concurrency there is
no wait (the first call goes at once); under load each round trip carries the reads and
writes of many requests, one Decide's write riding with the next ones' reads. Under
load (the previous round trip carried more than one call) a round trip waits
``batch_linger`` seconds (1 ms by default) for more to join: on a CPU-bound server that
trades a millisecond of latency for fewer, fuller round trips (bench/RESULTS.md §11).

Each caller still waits for its own read or write (acknowledged means stored) and for no
longer than its own ``timeout``: past it, or when Redis cannot be reached, the call
raises :class:`~engine.ports.StoreUnavailable` and the decision is answered degraded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio

from adapters.redis_connect import async_client
from adapters.redis_feedback import feedback_steps, run_async
from adapters.redis_replicas import check_replicated, wait_command
from adapters.redis_scripts import COMMIT_FEEDBACK, MAX_COMMIT_ATTEMPTS
from engine.ports import (
    FeedbackChange,
    FeedbackCommit,
    Learning,
    StoreUnavailable,
)
from engine.records import CorruptRecord, DecisionRecord, Profile, decode_profile, encode

if TYPE_CHECKING:
    from adapters.redis_store import RedisStore

FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisDecideIO:
    """:class:`~engine.ports.DecideIO` on the same Redis, keys and profile cache as a
    :class:`~adapters.redis_store.RedisStore`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        timeout = store.decide_timeout
        self.redis = async_client(store.url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout, health_check_interval=30)
        self._reads: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._writes: list[tuple[DecisionRecord, float, asyncio.Future[None]]] = []
        self._flushing = False
        self._last_batch = 0  # calls the previous round trip carried
        self.linger = store.batch_linger
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (fewer than the calls: the batching works)
        # Feedback's transactions: the store's ordinary timeouts, not Decide's
        self.writer = async_client(store.url, socket_timeout=5, socket_connect_timeout=5,
                                   health_check_interval=30)
        self._commit_script = self.writer.register_script(COMMIT_FEEDBACK)

    # ---- Feedback: the store's compare-and-set, awaited instead of on a thread ------------
    async def commit_feedback(self, decision_id: str, idempotency_key: str,
                              change: FeedbackChange, ttl_seconds: float, fingerprint: str,
                              timeout: float) -> FeedbackCommit:
        """:meth:`RedisStore.commit_feedback <adapters.redis_store.RedisStore.commit_feedback>`
        on the asyncio client: two read round trips and the script, the same keys and
        the same all-or-nothing write; StoreUnavailable past ``timeout`` (the script may
        or may not have run: a retry with the same key is answered as a duplicate)."""
        if timeout <= 0:
            raise StoreUnavailable("redis: no time left for the feedback")
        try:
            async with asyncio.timeout(timeout):
                commit = await run_async(
                    feedback_steps(self.store, decision_id, idempotency_key, change,
                                   ttl_seconds, fingerprint),
                    self.writer, self._commit_script)
                await self.replicated()  # a duplicate too: the first may not have been
                return commit
        except TimeoutError:
            raise StoreUnavailable(f"redis: feedback took longer than {timeout:.3f}s"
                                   ) from None
        except FAILURES as err:
            raise StoreUnavailable(f"redis: {err}") from err

    async def update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                             learning: Learning | None, timeout: float) -> Profile:
        """:meth:`RedisStore.update_profile <adapters.redis_store.RedisStore.update_profile>`
        (WATCH, read, MULTI: the profile and its learning-log entry) on the asyncio
        client; StoreUnavailable past ``timeout``."""
        if timeout <= 0:
            raise StoreUnavailable("redis: no time left for the profile update")
        try:
            async with asyncio.timeout(timeout):
                profile = await self._update_profile(user_id, change, learning)
                await self.replicated()
                return profile
        except TimeoutError:
            raise StoreUnavailable(f"redis: profile update took longer than {timeout:.3f}s"
                                   ) from None
        except FAILURES as err:
            raise StoreUnavailable(f"redis: {err}") from err

    async def _update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                              learning: Learning | None) -> Profile:
        store = self.store
        key = store.key("p", user_id)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            async with self.writer.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    data = cast(bytes | None, await pipe.get(key))
                    profile = change(decode_profile(data) if data is not None else None)
                    event = learning(profile) if learning is not None else None
                    pipe.multi()
                    pipe.set(key, encode(profile))
                    if event is not None:
                        store.queue_log_entry(pipe, user_id, event)
                    await pipe.execute()
                except redis.WatchError:
                    continue  # another writer came first: read again
            store.remember_profile(user_id, encode(profile))
            return profile
        raise StoreUnavailable(f"profile of {user_id}: still conflicting after "
                               f"{MAX_COMMIT_ATTEMPTS} attempts")

    async def replicated(self) -> None:
        """:meth:`RedisStore.replicated <adapters.redis_store.RedisStore.replicated>` on
        the asyncio client."""
        store = self.store
        if store.replicas <= 0:
            return
        pipe = self.writer.pipeline(transaction=False)
        pipe.set(f"{store.ns}:replicated", time.time())
        pipe.execute_command(*wait_command(store.replicas, store.replica_timeout))
        check_replicated(int((await pipe.execute())[1]), store.replicas,
                         store.replica_timeout)

    # ---- profiles and records: one pipeline in flight, carrying all that waits -------------
    async def get_profile(self, user_id: str, timeout: float) -> Profile | None:
        hit, data = self.store.cached_profile(user_id)
        if not hit:
            waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self._reads.setdefault(user_id, []).append(waiter)
            self._kick()
            data = await _within(waiter, timeout, "profile read")
        return decode_profile(data) if data is not None else None

    async def save_decision(self, record: DecisionRecord, ttl_seconds: float,
                            timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((record, ttl_seconds, waiter))
        self._kick()
        await _within(waiter, timeout, "decision record write")

    async def get_profiles(self, user_ids: Sequence[str], timeout: float
                           ) -> list[Profile | CorruptRecord | None]:
        """The profiles in one wait, read with whatever else the next round trip
        carries (the cached ones from the cache)."""
        loop = asyncio.get_running_loop()
        found: list[bytes | asyncio.Future[bytes | None] | None] = []
        waiting: list[asyncio.Future[bytes | None]] = []
        for user_id in user_ids:
            hit, data = self.store.cached_profile(user_id)
            if hit:
                found.append(data)
                continue
            waiter: asyncio.Future[bytes | None] = loop.create_future()
            self._reads.setdefault(user_id, []).append(waiter)
            found.append(waiter)
            waiting.append(waiter)
        if waiting:
            self._kick()
            await _within(asyncio.gather(*waiting), timeout, "profile reads")
        profiles: list[Profile | CorruptRecord | None] = []
        for item in found:
            data = item.result() if isinstance(item, asyncio.Future) else item
            try:
                profiles.append(decode_profile(data) if data is not None else None)
            except CorruptRecord as err:
                profiles.append(err)
        return profiles

    async def save_decisions(self, writes: Sequence[tuple[DecisionRecord, float]],
                             timeout: float) -> None:
        """The records in the next round trip (one command), one wait for all."""
        if not writes:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.extend((record, ttl_seconds, waiter) for record, ttl_seconds in writes)
        self._kick()
        await _within(waiter, timeout, "decision record writes")

    def _kick(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            while self._reads or self._writes:
                if self._last_batch > 1 and self.linger > 0:  # under load: let more join
                    await asyncio.sleep(self.linger)
                reads, self._reads = self._reads, {}
                writes, self._writes = self._writes, []
                await self._flush(reads, writes)
        finally:
            self._flushing = False

    async def _flush(self, reads: dict[str, list[asyncio.Future[bytes | None]]],
                     writes: list[tuple[DecisionRecord, float, asyncio.Future[None]]]
                     ) -> None:
        """One round trip: an MGET of the profiles asked, and the records to write (a
        pipeline when there are both; the command alone when there is one, as at low
        concurrency: redis-py's pipeline costs ~50 µs of CPU more per round trip)."""
        self.round_trips += 1
        self._last_batch = len(reads) + len(writes)
        users = list(reads)
        keys = [self.store.key("p", u) for u in users]
        save = self.store.decisions_command((record, ttl) for record, ttl, _ in writes)
        replicas = self.store.replicas if save else 0
        replies: list[Any]
        try:
            if not save:
                replies = [await self.redis.mget(keys)]
            elif not users and not replicas:
                replies = [await self.redis.eval(*save)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                if users:
                    pipe.mget(keys)
                pipe.eval(*save)
                if replicas:  # the records' own connection: WAIT counts its writes
                    pipe.execute_command(*wait_command(replicas, self.store.decide_timeout))
                replies = await pipe.execute()
                if not users:
                    replies.insert(0, None)
        except (*FAILURES, redis.RedisError) as err:  # an error reply too: not stored
            _fail([w for waiters in reads.values() for w in waiters], err)
            _fail([w for _, _, w in writes], err)
            return
        if users:
            for user, data in zip(users, cast(list[bytes | None], replies[0]), strict=True):
                self.store.remember_profile(user, data)
                for reader in reads[user]:
                    if not reader.done():
                        reader.set_result(data)
        if replicas:
            try:
                check_replicated(int(replies[-1]), replicas, self.store.decide_timeout)
            except StoreUnavailable as err:
                _fail([w for _, _, w in writes], err)
                return
        for _, _, writer in writes:
            if not writer.done():
                writer.set_result(None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ping(self, timeout: float) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout))
        except (TimeoutError, *FAILURES):
            return False

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.writer.aclose()


async def _within(waiter: asyncio.Future[Any], timeout: float, what: str) -> Any:
    """The waiter's result, or StoreUnavailable after ``timeout`` seconds. (A timer that
    fails the waiter: the waiter is this call's own, so ``asyncio.wait_for``'s extra
    future and cancellation handshake are not needed on every read and write.)"""
    if timeout <= 0:
        waiter.cancel()
        raise StoreUnavailable(f"redis: no time left for the {what}")
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter, timeout, what)
    try:
        return await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[Any], timeout: float, what: str) -> None:
    if not waiter.done():  # the round trip answers it later, or never: it is skipped then
        waiter.set_exception(StoreUnavailable(
            f"redis: {what} took longer than {timeout:.3f}s"))


def _fail(waiters: list[asyncio.Future[Any]], err: BaseException) -> None:
    failure = StoreUnavailable(f"redis: {err}")
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(failure)
