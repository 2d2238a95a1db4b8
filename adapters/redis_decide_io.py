"""Decide's Redis I/O on redis-py's asyncio client: coalesced reads, group-committed records.

A server's event loop runs many Decides at once. Their profile reads that miss the
in-process cache are gathered into **one MGET per loop turn**; their decision records
are written by **group commit**: every record that arrived while the previous write was
in flight goes out in one pipeline. Each caller still waits for its own read or write
(acknowledged means stored) and for no longer than its own ``timeout``: past it, or when
Redis cannot be reached, the call raises :class:`~engine.ports.StoreUnavailable` and the
decision is answered degraded.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio

from engine.ports import StoreUnavailable
from engine.records import DecisionRecord, Profile, decode_profile, encode

if TYPE_CHECKING:
    from adapters.redis_store import RedisStore

FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisDecideIO:
    """:class:`~engine.ports.DecideIO` on the same Redis, keys and profile cache as a
    :class:`~adapters.redis_store.RedisStore`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        timeout = store.decide_timeout
        self.redis = redis.asyncio.Redis.from_url(
            store.url, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30)
        self._reads: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._read_scheduled = False
        self._writes: list[tuple[DecisionRecord, float, asyncio.Future[None]]] = []
        self._writing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0  # MGETs sent (the coalescing shows as reads < profiles asked)
        self.writes = 0  # pipelines sent

    # ---- profiles: one MGET per loop turn ------------------------------------------------
    async def get_profile(self, user_id: str, timeout: float) -> Profile | None:
        hit, data = self.store.cached_profile(user_id)
        if not hit:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bytes | None] = loop.create_future()
            self._reads.setdefault(user_id, []).append(waiter)
            if not self._read_scheduled:
                self._read_scheduled = True
                loop.call_soon(self._send_reads)
            data = await _within(waiter, timeout, "profile read")
        return decode_profile(data) if data is not None else None

    def _send_reads(self) -> None:
        self._read_scheduled = False
        batch, self._reads = self._reads, {}
        self._spawn(self._read(batch))

    async def _read(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        users = list(batch)
        self.reads += 1
        try:
            values = await self.redis.mget([self.store.key("p", u) for u in users])
        except FAILURES as err:
            _fail([w for waiters in batch.values() for w in waiters], err)
            return
        for user, data in zip(users, cast(list[bytes | None], values), strict=True):
            self.store.remember_profile(user, data)
            for waiter in batch[user]:
                if not waiter.done():
                    waiter.set_result(data)

    # ---- decision records: group commit ------------------------------------------------
    async def save_decision(self, record: DecisionRecord, ttl_seconds: float,
                            timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((record, ttl_seconds, waiter))
        if not self._writing:
            self._writing = True
            self._spawn(self._write_all())
        await _within(waiter, timeout, "decision record write")

    async def _write_all(self) -> None:
        try:
            while self._writes:
                batch, self._writes = self._writes, []
                await self._write(batch)
        finally:
            self._writing = False

    async def _write(self, batch: list[tuple[DecisionRecord, float, asyncio.Future[None]]]
                     ) -> None:
        self.writes += 1
        pipe = self.redis.pipeline(transaction=False)
        for record, ttl_seconds, _ in batch:
            ttl = max(1, int(ttl_seconds))
            index = self.store.key("ud", record.user_id)
            pipe.set(self.store.key("d", record.decision_id), encode(record), ex=ttl)
            pipe.sadd(index, record.decision_id)
            pipe.expire(index, ttl)
        try:
            await pipe.execute()
        except FAILURES as err:
            _fail([w for _, _, w in batch], err)
            return
        for _, _, waiter in batch:
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        await self.redis.aclose()


async def _within(waiter: asyncio.Future[Any], timeout: float, what: str) -> Any:
    """The waiter's result, or StoreUnavailable after ``timeout`` seconds."""
    if timeout <= 0:
        waiter.cancel()
        raise StoreUnavailable(f"redis: no time left for the {what}")
    try:
        return await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        raise StoreUnavailable(f"redis: {what} took longer than {timeout:.3f}s") from None


def _fail(waiters: list[asyncio.Future[Any]], err: BaseException) -> None:
    failure = StoreUnavailable(f"redis: {err}")
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(failure)
