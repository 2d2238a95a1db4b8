"""Group commit on one asyncio Redis client: one round trip in flight at a time, and
everything that arrives while it is out goes in the next one.

A server's event loop runs many requests at once. Their Redis work is batched the way
databases group their commits: profile reads (one ``MGET``), decision records (one
``SAVE_DECISIONS`` script), profile updates (one ``UPDATE_PROFILES`` script, each a
compare-and-set) and any other command (a feedback's reads and script) that arrive while
a round trip is out all go in the next one. With no concurrency there is no wait (the
first call goes at once); under load (the previous round trip carried more than one
call) a round trip waits ``linger`` seconds for more to join: on a CPU-bound server that
trades a millisecond of latency for fewer, fuller round trips (bench/RESULTS.md §11).
With the store's ``replicas`` a round trip that writes ends with a ``WAIT`` on its own
connection (``WAIT`` counts the calling connection's writes).

Each caller gets a future of its own: it is answered when its part of the round trip is
(acknowledged means stored), or failed with :class:`~engine.ports.StoreUnavailable`
(an error reply fails only the calls it answers).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import redis.asyncio

from adapters.redis_replicas import check_replicated, wait_command
from engine.ports import StoreFull, StoreUnavailable
from engine.records import DecisionRecord

if TYPE_CHECKING:
    from adapters.redis_store import RedisStore

FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)
"""What redis-py raises when Redis cannot be reached or answer in time."""
_Write = tuple[DecisionRecord, float, "asyncio.Future[None]"]
_Update = tuple[str, bytes | None, bytes, bytes | None, "asyncio.Future[bool]"]
"""(user, the profile as read, the new one, its learning-log entry, the waiter told
whether it applied)."""


class RoundTrips:
    """The calls waiting for the next round trip on ``client``, and the task that sends
    them; ``wait_timeout`` bounds a round trip's ``WAIT`` for replicas."""

    def __init__(self, store: RedisStore, client: redis.asyncio.Redis, linger: float,
                 wait_timeout: float) -> None:
        self.store, self.client = store, client
        self.linger, self.wait_timeout = linger, wait_timeout
        self._reads: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._writes: list[_Write] = []
        self._updates: list[_Update] = []
        self._commands: list[tuple[tuple[Any, ...], asyncio.Future[Any], bool, bool]] = []
        self._flushing = False
        self._last_batch = 0  # calls the previous round trip carried
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.count = 0  # round trips sent (fewer than the calls: the batching works)

    def _future(self) -> asyncio.Future[Any]:
        """A waiter on the running loop. The loop is kept (the client's connections are
        bound to one loop anyway) and asked for again only once it is closed (another
        ``asyncio.run``): ``asyncio.get_running_loop()`` costs a ``getpid`` system call
        per call on Python 3.11, and this runs for every read and write."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    def read(self, user_id: str) -> asyncio.Future[bytes | None]:
        """The encoded profile as stored (None: none), read by the next round trip (and
        put in the store's in-process cache)."""
        waiter: asyncio.Future[bytes | None] = self._future()
        self._reads.setdefault(user_id, []).append(waiter)
        self._kick()
        return waiter

    def write(self, records: Iterable[tuple[DecisionRecord, float]]) -> asyncio.Future[None]:
        """Decision records (each with its TTL in seconds), stored by the next round trip."""
        waiter: asyncio.Future[None] = self._future()
        self._writes.extend((record, ttl, waiter) for record, ttl in records)
        self._kick()
        return waiter

    def update(self, user_id: str, expected: bytes | None, profile: bytes,
               entry: bytes | None) -> asyncio.Future[bool]:
        """Replace the user's profile with ``profile`` (and log ``entry``) if it is still
        ``expected``; the future says whether it was."""
        waiter: asyncio.Future[bool] = self._future()
        self._updates.append((user_id, expected, profile, entry, waiter))
        self._kick()
        return waiter

    def command(self, *args: Any, waited: bool = False, companion: bool = False
                ) -> asyncio.Future[Any]:
        """Any other command, sent with the next round trip; the future gets its reply.
        ``waited``: a write the round trip's ``WAIT`` for the store's replicas confirms
        (the future fails if they do not have it in time). ``companion``: sent with
        another call of the same request (a read, a write), so not one more caller: a
        round trip it rides is not counted as carrying several (no linger after it)."""
        waiter: asyncio.Future[Any] = self._future()
        self._commands.append((args, waiter, waited, companion))
        self._kick()
        return waiter

    def _kick(self) -> None:
        if not self._flushing:
            self._flushing = True
            loop = self._loop or asyncio.get_running_loop()  # (set by the queued call)
            task = loop.create_task(self._flush_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_all(self) -> None:
        try:
            while self._reads or self._writes or self._updates or self._commands:
                if self._last_batch > 1 and self.linger > 0:  # under load: let more join
                    await asyncio.sleep(self.linger)
                reads, self._reads = self._reads, {}
                writes, self._writes = self._writes, []
                updates, self._updates = self._updates, []
                others, self._commands = self._commands, []
                await self._flush(reads, writes, updates, others)
        finally:
            self._flushing = False

    async def _flush(self, reads: dict[str, list[asyncio.Future[bytes | None]]],
                     writes: list[_Write], updates: list[_Update],
                     others: list[tuple[tuple[Any, ...], asyncio.Future[Any], bool, bool]]
                     ) -> None:
        """One round trip: a pipeline when it carries several commands; the command
        alone when one, as at low concurrency (redis-py's pipeline costs ~50 µs of CPU
        more per round trip)."""
        self.count += 1
        self._last_batch = (len(reads) + len(writes) + len(updates)
                            + sum(not companion for *_, companion in others))
        store = self.store
        commands: list[_Command] = []
        if reads:
            users = list(reads)
            commands.append(_Command(
                ("MGET", *(store.key("p", u).encode() for u in users)),
                functools.partial(_answer_reads, store, users, reads),
                [w for waiters in reads.values() for w in waiters]))
        save = store.decisions_command((record, ttl) for record, ttl, _ in writes)
        if save:
            stored = [w for _, _, w in writes]
            commands.append(_Command(("EVAL", *save), functools.partial(_answer_all, stored),
                                     stored, waited=True))
        update = store.updates_command(u[:4] for u in updates)
        if update:
            commands.append(_Command(("EVAL", *update),
                                     functools.partial(_answer_updates, store, updates),
                                     [u[4] for u in updates], waited=True))
        for args, waiter, waited, _ in others:
            commands.append(_Command(args, functools.partial(_answer, waiter), [waiter],
                                     waited))
        replicas = store.replicas if any(c.waited for c in commands) else 0
        if replicas:  # the writes' own connection: WAIT counts its writes
            commands.append(_Command(wait_command(replicas, self.wait_timeout), _ignore, []))
        try:
            if len(commands) == 1:
                replies = [await self.client.execute_command(*commands[0].args)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command.args)
                replies = await pipe.execute(raise_on_error=False)
        except (*FAILURES, redis.RedisError) as err:  # not acknowledged (stored or not)
            for command in commands:
                fail(command.waiters, err)
            return
        unreplicated: BaseException | None = None
        if replicas:
            try:
                if isinstance(replies[-1], Exception):
                    raise replies[-1]
                check_replicated(int(replies[-1]), replicas, self.wait_timeout)
            except (StoreUnavailable, redis.RedisError) as err:
                unreplicated = err
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):  # an error reply: only its own calls fail
                fail(command.waiters, reply)
            elif command.waited and unreplicated is not None:
                fail(command.waiters, unreplicated)
            else:
                command.answer(reply)


class _Command(NamedTuple):
    args: tuple[Any, ...]
    answer: Callable[[Any], None]  # given the reply: answers the waiters
    waiters: list[asyncio.Future[Any]]  # failed on an error reply
    waited: bool = False  # a write the round trip's WAIT must confirm


def _answer_reads(store: RedisStore, users: list[str],
                  reads: dict[str, list[asyncio.Future[bytes | None]]],
                  values: list[bytes | None]) -> None:
    for user, data in zip(users, values, strict=True):
        store.remember_profile(user, data)
        for reader in reads[user]:
            if not reader.done():
                reader.set_result(data)


def _answer_updates(store: RedisStore, updates: list[_Update], applied: list[int]) -> None:
    for (user, _, profile, _, waiter), ok in zip(updates, applied, strict=True):
        if ok:
            store.remember_profile(user, profile)
        if not waiter.done():
            waiter.set_result(bool(ok))


def _answer_all(waiters: list[asyncio.Future[None]], _: Any) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _answer(waiter: asyncio.Future[Any], reply: Any) -> None:
    if not waiter.done():
        waiter.set_result(reply)


def _ignore(_: Any) -> None:
    pass


def store_failure(err: BaseException) -> StoreUnavailable:
    """What a redis-py failure means to the engine: StoreFull for a write Redis refused
    at its ``maxmemory`` (a retry will not help until memory is freed), else
    StoreUnavailable."""
    if isinstance(err, StoreUnavailable):
        return err
    if isinstance(err, redis.exceptions.OutOfMemoryError):
        return StoreFull(f"redis: {err}")
    return StoreUnavailable(f"redis: {err}")


def fail(waiters: list[asyncio.Future[Any]], err: BaseException) -> None:
    """Fail each waiter not answered yet with StoreUnavailable naming ``err``."""
    failure = store_failure(err)
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(failure)
