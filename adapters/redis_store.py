"""Redis store: profiles, decisions, bandit counters and the learning log, shared by replicas.

Layout (``{ns}`` is the namespace, ``arb`` by default; on a Redis Cluster the namespace
in braces, ``{arb}``, a hash tag that puts every key in one slot):

==========================  =================================================
``{ns}:p:{user}``           profile, msgspec MessagePack
``{ns}:d:{decision}``       decision record, expires after its placement's attribution
                            window
``{ns}:fn:{id}``            a features' names list that ``compact`` records refer to by
                            id (:mod:`engine.feature_names`): written with the first
                            record that refers to it, kept a day past the last
``{ns}:udz:{user}``         sorted set of the user's decision ids by expiry (for
                            ForgetProfile); an expired id leaves at the user's next write
``{ns}:k:{key}``            idempotency key of an applied feedback, scoped to its decision
                            (``{decision}|k|{key}``, or ``{decision}|d|{action}|{outcome}``
                            without one); the value is the request's fingerprint; it
                            expires with its decision; ``q|{len}|{user}|{request_id}``:
                            a Decide request id's claim (``P`` and a digest of the
                            request, for the deciding call's time left) or kept answer
                            (``A``, the digest, the encoded ``DecideResponse``), which
                            expires with its decision (:mod:`engine.grpc.answers`)
``{ns}:ukz:{user}``         sorted set of the user's idempotency keys and kept answers by
                            expiry (likewise)
``{ns}:ulz:{user}``         sorted set of the user's learning-log entry ids by time; ids
                            trimmed from the log leave it at the user's next entry
``{ns}:ud|uk|ul:{user}``    the same indexes as plain sets, as earlier builds wrote them
                            (they grew with a customer's history): still read by
                            ForgetProfile until they expire, never written
``{ns}:arms:{experiment}``  hash ``{arm}:trials|successes|sum_sq`` (HINCRBYFLOAT);
                            ``{arm}@{hour}:...`` buckets for windowed experiments
``{ns}:split:{experiment}`` a fixed split's phase: its fingerprint under ``=`` and each
                            arm's exposures when the weights last changed (the sample
                            ratio check counts from there; engine.experiments.splits)
``{ns}:counters:{name}``    hash of population counters shared by replicas
                            (``engagement_hours``: engagements by hour of the week;
                            ``pct:{statistic}``: percentile() histograms)
``{ns}:learn``              stream of learning events: feedback, item interactions,
                            forget markers
``{ns}:{items}``            hash of the catalogue's changes: item id -> item
                            (MessagePack), empty for a removed item (the three
                            catalogue keys share a Cluster hash tag)
``{ns}:{items}:v``          the catalogue's version (INCR on every change; its high bits
                            an epoch drawn when it is created: CATALOGUE_EPOCH_BITS)
``{ns}:{items}:at``         sorted set: item id -> the version that last changed it (a
                            replica reads only what changed since its version)
``{ns}:{items}:since``      sorted set: item id -> the version it was last added at
                            (the catalogue's order; items written before it existed
                            come first)
``{ns}:{items}:gone``       sorted set: removed item id -> the version it was removed
                            at; the marks of removals older than
                            ``CATALOGUE_REMOVALS_KEPT`` versions are deleted, and
``{ns}:{items}:purged``     the newest version whose removals' marks are (a replica
                            behind it reads everything)
``{ns}:models``             hash ``blob`` (model snapshot) and ``offset`` (stream id)
``{ns}:consumers``          hash ``{replica}`` -> ``{offset}|{ms}``: what each applied
``{ns}:replicated``         a marker written before ``WAIT`` (``replicas``: the time of
                            the last write waited for)
==========================  =================================================

Every read-modify-write is optimistic (retried on conflict), so concurrent updates
from any number of replicas never lose one: profiles with WATCH/MULTI/EXEC here, and
on a server's loop (TrackEvent) with a compare-and-set script shared by the updates in
flight (``UPDATE_PROFILES``, adapters.redis_round_trips); a
feedback reads in two round trips and commits its effects (decision, profile,
counters, stream entry, idempotency key) in one compare-and-set script
(``COMMIT_FEEDBACK``): acknowledged means all of it is stored.

Profiles are cached in process for ``cache_ttl`` seconds (bounded LRU+TTL): a
replica sees another replica's profile writes at most ``cache_ttl`` late and its
own writes at once. A cached Decide makes no profile round trip.

On a Redis Cluster (``redis+cluster://``) every key of the namespace is under one hash
tag, ``{arb}:...``: one slot on one primary, so every script and pipeline stays legal
(the Cluster's high availability, not its sharding; docs/architecture.md, "Toward Redis
Cluster", has what spreading over primaries needs). A Cluster node named by a
``redis://`` URL is refused with a clear error (:func:`check_server`).
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from threading import Lock
from typing import Any, TypeVar, cast

import msgspec
import redis
from cachetools import TTLCache

from adapters.redis_connect import parse_cluster_url, sync_client
from adapters.redis_decide_io import RedisDecideIO
from adapters.redis_feedback import feedback_steps, run_sync
from adapters.redis_replicas import check_replicated, wait_command
from adapters.redis_scripts import (
    CHANGE_ITEMS,
    COMMIT_FEEDBACK,
    HOLD_LEASE,
    LOG_ENTRY,
    MARK_SPLIT,
    RELEASE_LEASE,
    SAVE_DECISIONS,
    SAVE_SHOWN_DECISIONS,
    UPDATE_PROFILES,
)
from engine.feature_names import FeatureNameSets
from engine.ports import (
    CATALOGUE_REMOVALS_KEPT,
    LEARNING_LOG_MAX_ENTRIES,
    CatalogueChanges,
    FeedbackChange,
    FeedbackCommit,
    FeedbackEffects,
    Learning,
    ProfileChanged,
    ProfileChangedError,
    StoreFull,
    StoreUnavailable,
)
from engine.records import (
    FORGET,
    RECORD_LAYOUTS,
    ArmCounts,
    CorruptRecord,
    DecisionRecord,
    LearningEvent,
    MissingFeatureNames,
    Profile,
    counter_deltas,
    counts_from_fields,
    decode_decision,
    decode_event,
    decode_profile,
    encode,
    encode_compact_decision,
    encode_decision,
    encode_decision_update,
    encode_event,
    pseudonym,
)

ShownWrite = tuple[FeedbackEffects, float, str, str, bytes | None]
"""A new record stored with its first outcome: the outcome's effects (the record with
it among them), the record's TTL in seconds, the outcome's idempotency key and
fingerprint, and the customer's profile as read (None: none)."""


def _b(value: Any) -> bytes | None:
    """redis-py types replies as bytes | str; with decode_responses off they are bytes."""
    return cast(bytes | None, value)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


USER_INDEX_TTL = 90 * 86400
"""How long after a user's last feedback the per-user indexes of it are kept."""
INDEXES = ("udz", "ukz", "ulz")
"""The user's decisions, idempotency keys and learning-log entries (sorted sets)."""
LEGACY_INDEXES = ("ud", "uk", "ul")
"""The same as sets, as earlier builds wrote them: read by ForgetProfile, never written."""
CLOCK_SKEW_SECONDS = 60.0
"""A decision id leaves its user's index this long after its expiry by the writer's clock
(replicas' clocks differ a little; the record itself expires by Redis's clock)."""
CONSUMER_TTL = 86400.0
"""Seconds after which a consumer that stopped checkpointing no longer holds the log."""
TRIM_BATCH = 100_000
"""Learning-log entries one XTRIM drops at most (a few ms of Redis's time)."""
FORGOTTEN_KEPT = 100_000
"""Forgotten users (pseudonyms) the ``forgotten`` stream keeps for the other processes'
decision logs: one down for longer than this many forgets misses the oldest."""
CATALOGUE_READ_CHUNK = 10_000
"""Catalogue items one command reads (HSCAN's count, HMGET's and ZMSCORE's ids): a few
milliseconds of Redis at a time, however large the catalogue."""
CATALOGUE_EPOCH_BITS = 32
"""A catalogue version's low bits count its changes; the bits above name its epoch, drawn
at random when the version key is created (by the first change, and again after the
store was wiped). A replica whose version is of another epoch reads everything: after
a wipe and as many changes as it had seen, its version would match the store's and it
would keep serving the items the wipe took, and miss the new ones, for good."""
CATALOGUE_EPOCHS = 1 << 20
"""Epochs drawn from (versions stay under 2**52: exact in Lua's numbers and in sorted
set scores)."""
T = TypeVar("T")
DEFAULT_CACHE_TTL = 1.0
DEFAULT_CACHE_SIZE = 100_000
DEFAULT_DECIDE_TIMEOUT = 0.5
"""Seconds Decide waits for Redis (profile, arm counters, its record) before degrading."""
DEFAULT_BATCH_LINGER = 0.001
"""Seconds a server's batched Decide round trip waits for more calls while under load."""
DEFAULT_REPLICA_TIMEOUT = 1.0
"""Seconds a write waits for its replicas (``replicas``) before it is refused."""


def _unavailable_on_connection_errors(cls: type[T]) -> type[T]:
    """Wrap every public method: a lost connection becomes StoreUnavailable."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not callable(method):
            continue

        def wrapper(*args: Any, __method: Any = method, **kwargs: Any) -> Any:
            try:
                return __method(*args, **kwargs)
            except redis.exceptions.OutOfMemoryError as err:  # a write refused at maxmemory
                raise StoreFull(f"redis: {err}") from err
            except (redis.ConnectionError, redis.TimeoutError) as err:
                raise StoreUnavailable(f"redis: {err}") from err

        functools.update_wrapper(wrapper, method)
        setattr(cls, name, wrapper)
    return cls


NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a namespace (the prefix of every key) may be: letters, digits, ``_ . -``."""


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is one (:data:`NAMESPACE`), else ValueError saying why.

    >>> check_namespace("shop-eu")
    'shop-eu'
    >>> check_namespace("a{b}")
    Traceback (most recent call last):
    ValueError: namespace 'a{b}': 1 to 64 letters, digits, '_', '.' or '-'
    """
    if not NAMESPACE.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r}: 1 to 64 letters, digits, '_', '.' or '-'")
    return namespace


class RedisClusterNotSupported(ValueError):
    """The URL names a Redis Cluster node as a standalone server (redis://), or a
    standalone server as a Cluster (redis+cluster://)."""


def check_server(url: str, timeout: float = 2.0) -> list[str]:
    """What a server must know of the Redis at ``url`` before it starts: raise
    :class:`RedisClusterNotSupported` for a Cluster node named by a ``redis://`` URL
    (``INFO``: ``cluster_enabled:1``; it would answer ``MOVED`` to most keys: a Cluster
    is ``redis+cluster://``); return warnings about settings that lose data silently
    (:func:`setting_warnings`). An unreachable Redis passes (a server starts degraded and
    waits for it), and so does one that refuses ``INFO`` (a managed Redis)."""
    cluster = parse_cluster_url(url)
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    clients = ((redis.Redis(host=host, port=port, **cluster.client_options(), **timeouts)
                for host, port in cluster.hosts) if cluster  # its nodes, the first that
               else iter([sync_client(url, **timeouts)]))  # answers
    for client in clients:
        try:
            info = client.info()
            break
        except (redis.ConnectionError, redis.TimeoutError, OSError, redis.ResponseError):
            continue
        finally:
            client.close()
    else:
        return []
    if cluster is None and int(info.get("cluster_enabled", 0) or 0):
        raise RedisClusterNotSupported(
            f"{url} is a Redis Cluster node: name the Cluster as redis+cluster://HOST:PORT"
            "[,HOST:PORT...] (every key of the namespace then shares one hash tag, on one "
            "primary), or use one primary (standalone, or redis+sentinel://HOST/SERVICE)")
    if cluster is not None and not int(info.get("cluster_enabled", 0) or 0):
        raise RedisClusterNotSupported(f"{url}: the server is not a Redis Cluster node; "
                                       "name it redis://HOST:PORT")
    return setting_warnings(info)


def setting_warnings(info: Mapping[str, Any]) -> list[str]:
    """Warnings about a Redis's settings (its ``INFO``) that would lose Arbiter's data
    without an error: a memory limit with an eviction policy drops keys when full
    (profiles with their contact history, so caps stop holding; decision records and
    their feature names; the idempotency keys that make feedback count once), where
    ``noeviction`` refuses writes instead (Decide degrades, writes are UNAVAILABLE).

    >>> setting_warnings({"maxmemory": 0, "maxmemory_policy": "allkeys-lru"})
    []
    >>> setting_warnings({"maxmemory": 2**30, "maxmemory_policy": "noeviction"})
    []
    >>> print(*setting_warnings({"maxmemory": 2**30, "maxmemory_policy": "volatile-lru"}))
    ... # doctest: +ELLIPSIS
    Redis evicts keys when full (maxmemory-policy volatile-lru, maxmemory 1.0 GiB): ...
    """
    limit = int(info.get("maxmemory", 0) or 0)
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if limit <= 0 or policy == "noeviction":
        return []
    return [f"Redis evicts keys when full (maxmemory-policy {policy}, maxmemory "
            f"{limit / 2**30:.1f} GiB): profiles and their contact history, decision records "
            "and feedback's idempotency keys can vanish without an error; set "
            "maxmemory-policy noeviction (a full Redis then refuses writes: Decide "
            "degrades, Feedback and TrackEvent answer UNAVAILABLE)"]


_ABSENT = object()
"""Not in the in-process profile cache (a cached None is a known absent profile)."""


@_unavailable_on_connection_errors
class RedisStore:
    """A :class:`~engine.ports.Store` on Redis (``redis://host:port/db``, or a primary
    found through Sentinel: ``redis+sentinel://host:port/service/db``,
    :mod:`adapters.redis_connect`)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "arb",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        decide_timeout: float = DEFAULT_DECIDE_TIMEOUT,
        batch_linger: float = DEFAULT_BATCH_LINGER,
        replicas: int = 0,
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
        log_max_entries: int = LEARNING_LOG_MAX_ENTRIES,
        profile_retention: float = 0.0,
        record_layout: str = "compact",
    ) -> None:
        if record_layout not in RECORD_LAYOUTS:
            raise ValueError(f"record layout {record_layout!r}: use "
                             f"{' or '.join(RECORD_LAYOUTS)}")
        self.record_layout = record_layout
        self.removals_kept = CATALOGUE_REMOVALS_KEPT  # (versions: a catalogue removal's mark)
        """How decision records are written (:data:`engine.records.RECORD_LAYOUTS`;
        ``array`` or ``map`` while replicas of an earlier build still read them)."""
        self.feature_names = FeatureNameSets()
        """The feature names lists this process knows (``compact`` records)."""
        # on a Cluster every key of the namespace shares its hash tag: one slot, so
        # every script and pipeline stays legal (adapters.redis_connect)
        check_namespace(namespace)
        self.ns = f"{{{namespace}}}" if parse_cluster_url(url) is not None else namespace
        self.ns_bytes = self.ns.encode()
        self._token = secrets.token_hex(8)  # this store's forgets (forgotten_since)
        self.redis = sync_client(url, self.ns, socket_timeout=5, socket_connect_timeout=5,
                                 health_check_interval=30)
        # Decide's reads and its record: a stalled Redis must not hold an answer for long
        self.fast = sync_client(url, self.ns, socket_timeout=decide_timeout,
                                socket_connect_timeout=decide_timeout, health_check_interval=30)
        self.url = url
        self.decide_timeout = decide_timeout
        self.batch_linger = batch_linger
        self.replicas = replicas
        """Replicas that must have a write before it is acknowledged (0: the primary's
        own, with its AOF, as by default); see :meth:`replicated`."""
        self.replica_timeout = replica_timeout
        self.log_max_entries = log_max_entries
        self.profile_retention = profile_retention
        """Seconds a profile is kept after its last change (0: for ever): each write sets
        the key's TTL, so a customer with no event and no feedback for that long is gone
        (their decisions and indexes expire on their own TTLs)."""
        """The learning log's cap (0: none; :data:`engine.ports.LEARNING_LOG_MAX_ENTRIES`)."""
        self._cache: TTLCache[str, bytes | None] | None = (
            TTLCache(maxsize=cache_size, ttl=cache_ttl) if cache_ttl > 0 else None)
        self._cache_lock = Lock()
        self._commit_feedback = self.redis.register_script(COMMIT_FEEDBACK)
        self._change_items = self.redis.register_script(CHANGE_ITEMS)
        self._hold_lease = self.redis.register_script(HOLD_LEASE)
        self._release_lease = self.redis.register_script(RELEASE_LEASE)
        self._mark_split = self.redis.register_script(MARK_SPLIT)

    def _retention(self) -> bytes:
        """:attr:`profile_retention` as the scripts take it: whole seconds, b"0" for ever."""
        retention = self.profile_retention
        return b"%d" % max(1, int(retention)) if retention > 0 else b"0"

    def _k(self, kind: str, name: str) -> str:
        return f"{self.ns}:{kind}:{name}"

    def replicated(self) -> None:
        """With ``replicas``: return once that many replicas have every write made so
        far, else raise :class:`NotReplicated` after ``replica_timeout``. Redis
        replicates one ordered stream, so a marker written now and waited for (``WAIT``
        counts the calling connection's own writes) stands for every write before it,
        on whatever connection: a failover to such a replica loses nothing acknowledged."""
        if self.replicas <= 0:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{self.ns}:replicated", time.time())
        pipe.execute_command(*wait_command(self.replicas, self.replica_timeout))
        check_replicated(int(pipe.execute()[1]), self.replicas, self.replica_timeout)

    key = _k

    @property
    def blocking(self) -> bool:
        return True

    def decide_io(self) -> RedisDecideIO:
        """Decide's reads and writes on redis-py's asyncio client (coalesced, batched)."""
        return RedisDecideIO(self)

    # ---- profiles -------------------------------------------------------------------
    def cached_profile(self, user_id: str) -> tuple[bool, bytes | None]:
        """(True, encoded profile or None) when the in-process cache holds the user."""
        return self._cached(user_id)

    def remember_profile(self, user_id: str, data: bytes | None) -> None:
        """Put an encoded profile (None: no profile) in the in-process cache."""
        self._remember(user_id, data)

    def _cached(self, user_id: str) -> tuple[bool, bytes | None]:
        if self._cache is None:
            return False, None
        # one get, which reads the clock once: ``in`` then ``[]`` raised KeyError when the
        # entry expired between the two (an INTERNAL error on a busy DecideBatch)
        with self._cache_lock:
            data = self._cache.get(user_id, _ABSENT)
        if data is _ABSENT:
            return False, None
        return True, data  # type: ignore[return-value]

    def _remember(self, user_id: str, data: bytes | None) -> None:
        if self._cache is not None:
            with self._cache_lock:
                self._cache[user_id] = data

    def get_profile(self, user_id: str) -> Profile | None:
        data = self.profile_bytes(user_id)
        return decode_profile(data) if data is not None else None

    def profile_bytes(self, user_id: str) -> bytes | None:
        """The profile as stored, encoded (from the in-process cache, as
        :meth:`get_profile` reads it)."""
        hit, data = self._cached(user_id)
        if not hit:
            data = _b(self.fast.get(self._k("p", user_id)))
            self._remember(user_id, data)
        return data

    def update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                       learning: Learning | None = None) -> Profile:
        key = self._k("p", user_id)

        def transaction(pipe: Any) -> Profile:
            data = _b(pipe.get(key))
            profile = change(decode_profile(data) if data is not None else None)
            stored = encode(profile)
            pipe.multi()
            if stored == data:  # nothing changed (an event applied before): nothing to
                return profile  # write (the empty transaction still checks the WATCH)
            event = learning(profile) if learning is not None else None
            retention = self._retention()
            pipe.set(key, stored, ex=int(retention) if retention != b"0" else None)
            if event is not None:
                self.queue_log_entry(pipe, user_id, event)
            return profile

        profile = cast(Profile, self.redis.transaction(
            transaction, key, value_from_callable=True))  # type: ignore[arg-type]
        self._remember(user_id, encode(profile))
        self.replicated()
        return profile

    def queue_log_entry(self, pipe: Any, user_id: str | None, event: LearningEvent) -> None:
        """Queue a learning-log entry (indexed by user for ForgetProfile) on ``pipe`` (a
        transaction of the synchronous or the asyncio client)."""
        if user_id is None:
            pipe.xadd(f"{self.ns}:learn", {"e": encode_event(event)})
            return
        index = self._k("ulz", user_id)
        pipe.eval(LOG_ENTRY, 2, f"{self.ns}:learn", index, encode_event(event),
                  USER_INDEX_TTL)

    def _items_key(self, suffix: str = "") -> str:
        """The catalogue's keys, hash-tagged into one Redis Cluster slot (one script
        writes them together)."""
        return f"{self.ns}:{{items}}{suffix}"

    def change_items(self, upserts: Mapping[str, bytes], removals: Iterable[str],
                     lasting: Collection[str] = ()) -> int:
        changes = {**upserts, **{k: b"!" if k in lasting else b"" for k in removals}}
        version = int(self._change_items(
            keys=[self._items_key(), self._items_key(":v"), self._items_key(":at"),
                  self._items_key(":since"), self._items_key(":gone"),
                  self._items_key(":purged")],
            args=[self.removals_kept, _new_epoch(),
                  *(x for pair in changes.items() for x in pair)]))
        self.replicated()
        return version

    def catalogue_changes(self, known_version: int) -> CatalogueChanges:
        """What changed since ``known_version`` (everything when it is 0): one MGET when
        nothing did, else the changed ids from the version index, then their values and
        the versions they were added at, CATALOGUE_READ_CHUNK at a time (a million
        items in one HGETALL held Redis, and every replica's decisions, for 0.6 s)."""
        raw = cast(list[bytes | None], self.redis.mget(
            [self._items_key(":v"), self._items_key(":purged")]))
        version = int(raw[0] or 0)
        try:
            purged = int(raw[1] or 0)
        except ValueError:  # (damaged: which removals were dropped is unknown, read all)
            purged = version + 1
        if version == known_version:
            return CatalogueChanges(version, None)
        if (not purged <= known_version <= version or known_version <= 0
                or known_version >> CATALOGUE_EPOCH_BITS != version >> CATALOGUE_EPOCH_BITS):
            # new, the store reset or wiped (another epoch), or behind removals whose
            # marks are gone: everything, a scan of the items (what changes meanwhile
            # comes again with the next read, after ``version``, read first)
            found: dict[bytes, bytes] = {}
            for chunk in self._scan("hscan", self._items_key()):
                found.update(cast(dict[bytes, bytes], chunk))
            since: dict[bytes, float] = {}
            for chunk in self._scan("zscan", self._items_key(":since")):
                since.update(cast(list[tuple[bytes, float]], chunk))
            ordered: dict[float, list[bytes]] = {0.0: []}  # (no version: removed, or
            for name in found:  # written by an earlier build; first, in the hash's order)
                ordered.setdefault(since.get(name, 0.0), []).append(name)
            items: dict[str, bytes] = {}
            for at in sorted(ordered):  # (by version, then by id)
                group = ordered[at]
                if at:
                    group.sort()
                items.update(zip(map(bytes.decode, group), map(found.__getitem__, group),
                                 strict=True))
            return CatalogueChanges(version, items, everything=True)
        pipe = self.redis.pipeline()  # MULTI: the version and what it covers, together
        pipe.get(self._items_key(":v"))
        pipe.zrangebyscore(self._items_key(":at"), f"({known_version}", "+inf")
        raw_version, ids = pipe.execute()
        names = [i.decode() for i in cast(list[bytes], ids)]
        values: dict[str, bytes] = {}
        for at in range(0, len(names), CATALOGUE_READ_CHUNK):
            part = names[at:at + CATALOGUE_READ_CHUNK]
            read = cast(list[bytes | None], self.redis.hmget(self._items_key(), part))
            values.update(zip(part, (value or b"" for value in read), strict=True))
        changed = self._added_at(values)
        return CatalogueChanges(int(raw_version or 0), {
            name: value for _, name, value in changed}, frozenset(
            name for at, name, _ in changed if at > known_version))

    def _scan(self, command: str, key: str) -> Iterator[Any]:
        """The chunks of an HSCAN or ZSCAN of ``key``, CATALOGUE_READ_CHUNK at a time (an
        element there for the whole scan comes at least once)."""
        cursor = 0
        while True:
            cursor, chunk = getattr(self.redis, command)(key, cursor,
                                                          count=CATALOGUE_READ_CHUNK)
            yield chunk
            if not cursor:
                return

    def _added_at(self, items: dict[str, bytes]) -> list[tuple[float, str, bytes]]:
        """``(version added at, id, item)`` of ``items``, sorted: the catalogue's order
        (0 for an item without one: removed, or written by an earlier build; those first,
        in the order given)."""
        names = list(items)
        since: list[float] = []  # (floats as stored: a damaged +-inf only orders)
        for at in range(0, len(names), CATALOGUE_READ_CHUNK):
            since.extend(s or 0.0 for s in cast(list[float | None], self.redis.zmscore(
                self._items_key(":since"), names[at:at + CATALOGUE_READ_CHUNK])))
        unplaced = [(0, name, items[name]) for name, at in zip(names, since, strict=True)
                    if not at]
        return unplaced + sorted((at, name, items[name])
                                 for name, at in zip(names, since, strict=True) if at)

    def forget(self, user_id: str) -> int:
        """The profile, the user's decisions, feedback keys and learning-log entries."""
        current = [self._k(kind, user_id) for kind in INDEXES]
        legacy = [self._k(kind, user_id) for kind in LEGACY_INDEXES]
        indexes = [*current, *legacy]

        def transaction(pipe: Any) -> None:
            # the indexes are WATCHed: a decision or feedback indexed meanwhile (another
            # replica) makes EXEC fail and the whole read-and-delete run again
            decisions, keys, entries = (
                {*pipe.zrange(index, 0, -1), *pipe.smembers(old)}
                for index, old in zip(current, legacy, strict=True))
            pipe.multi()  # one MULTI: everything goes, or nothing
            pipe.delete(self._k("p", user_id), *(self._k("d", d.decode()) for d in decisions))
            if keys:
                pipe.delete(*(self._k("k", k.decode()) for k in keys))
            if entries:
                pipe.xdel(f"{self.ns}:learn", *entries)
            pipe.delete(*indexes)
            now = time.time()  # the recommender drops what it learnt of them too
            self.queue_log_entry(pipe, None, LearningEvent("", "", FORGET, now, now,
                                                      user=pseudonym(user_id)))
            # and every process's decision log (engine.service.Arbiter.sync)
            pipe.xadd(f"{self.ns}:forgotten", {"u": pseudonym(user_id), "by": self._token},
                      maxlen=FORGOTTEN_KEPT, approximate=True)

        replies = cast(list[Any], self.redis.transaction(transaction, *indexes))
        self._remember(user_id, None)
        self.replicated()
        return int(replies[0])  # the profile and decisions, as the API documents

    # ---- decisions ------------------------------------------------------------------
    def save_decision(self, record: DecisionRecord, ttl_seconds: float) -> None:
        self.fast.eval(*self.decisions_command([(record, ttl_seconds)]))
        self.replicated()

    def decisions_command(self, writes: Iterable[tuple[DecisionRecord, float]]
                          ) -> tuple[Any, ...]:
        """The arguments of one ``EVAL`` (redis-py's ``eval(script, numkeys, *keys_args)``,
        on a client or a pipeline) that stores decision records (each with its TTL in
        seconds) and their places in their users' indexes: the ids that expired leave
        each index, so it holds the customer's live decisions, however many they made
        before. Empty when there is nothing to write."""
        now = time.time()
        keys: list[bytes] = []
        args: list[bytes] = []
        lists: dict[bytes, tuple[bytes, int]] = {}  # names id -> (list, seconds to keep)
        for record, ttl_seconds in writes:
            keys += (b"%s:d:%s" % (self.ns_bytes, record.decision_id.encode()),
                     self._k("udz", record.user_id).encode())
            args += self._record_args(record, ttl_seconds, now, lists)
        if not keys:
            return ()
        head = self._names_head(now, lists)
        return (SAVE_DECISIONS, len(lists) + len(keys), *(self.names_key(r) for r in lists),
                *keys, *head, *args)

    def shown_decisions_command(self, shown: Sequence[ShownWrite]) -> tuple[Any, ...]:
        """The arguments of one ``EVAL`` of ``SAVE_SHOWN_DECISIONS``: new records, each
        stored with its first outcome's effects (what :meth:`decisions_command` and
        ``COMMIT_FEEDBACK`` write) if its customer's profile is still as read."""
        now = time.time()
        lists: dict[bytes, tuple[bytes, int]] = {}
        keys: list[bytes | str] = []
        args: list[Any] = []
        arms: dict[str, int] = {}  # arm hash -> its KEYS index (after the records')
        for effects, ttl_seconds, idempotency_key, fingerprint, pdata in shown:
            record, user = effects.decision, effects.decision.user_id
            keys += (b"%s:d:%s" % (self.ns_bytes, record.decision_id.encode()),
                     self._k("udz", user), self._k("k", idempotency_key), self._k("p", user),
                     self._k("ulz", user), self._k("ukz", user))
            args += self._record_args(record, ttl_seconds, now, lists)
            args += (b"0" if pdata is None else b"1" + pdata,
                     encode(effects.profile) if effects.profile is not None else b"",
                     fingerprint, idempotency_key, encode_event(effects.event),
                     b"%d" % max(int(ttl_seconds), USER_INDEX_TTL))
            moved: list[Any] = []
            for experiment, deltas in counter_deltas(effects.arm_increments).items():
                index = arms.setdefault(experiment, len(arms))
                for name, delta in deltas.items():
                    moved += [index, name, repr(float(delta))]
            args.append(b"%d" % (len(moved) // 3))
            args.append(moved)  # (key indexes made absolute below)
        if not keys:
            return ()
        first_arm = len(lists) + 1 + len(keys) + 1  # KEYS are numbered from 1
        flat: list[Any] = []
        for arg in args:
            if isinstance(arg, list):
                for j in range(0, len(arg), 3):
                    flat += (b"%d" % (first_arm + arg[j]), arg[j + 1], arg[j + 2])
            else:
                flat.append(arg)
        all_keys = [*(self.names_key(r) for r in lists), f"{self.ns}:learn", *keys,
                    *(self._k("arms", e) for e in arms)]
        head = [*self._names_head(now, lists), self._retention(), b"%d" % len(shown)]
        return (SAVE_SHOWN_DECISIONS, len(all_keys), *all_keys, *head, *flat)

    def _record_args(self, record: DecisionRecord, ttl_seconds: float, now: float,
                     lists: dict[bytes, tuple[bytes, int]]) -> tuple[bytes, ...]:
        """A record's four arguments of the save scripts (the record, its TTL, its
        decision index's TTL, its id), the names list it refers to added to ``lists``
        (names id -> (list, seconds to keep))."""
        ttl = max(1, int(ttl_seconds))
        if self.record_layout == "compact":
            data, names = encode_compact_decision(record, self.feature_names)
            if names is not None:
                ref, blob = names
                lists[ref] = (blob, max(ttl, lists.get(ref, (b"", 0))[1]))
        else:
            data = encode_decision(record, self.record_layout)
        # every argument as bytes: redis-py passes bytes through and would otherwise
        # encode each str and int in Python (half of packing a record's arguments). The
        # index lives as long as a decision can: its TTL plus its age is the attribution
        # window, never shorter than any id in the index has left
        return (data, b"%d" % ttl, b"%d" % (ttl + max(0, int(now - record.decided_at)) + 1),
                record.decision_id.encode())

    @staticmethod
    def _names_head(now: float, lists: dict[bytes, tuple[bytes, int]]) -> list[bytes]:
        """The save scripts' first arguments: now, the decision indexes' lower bound,
        the names lists and how long each must live."""
        head = [repr(now).encode(), f"({now - CLOCK_SKEW_SECONDS}".encode(),
                b"%d" % len(lists)]
        for blob, keep in lists.values():
            head += (blob, b"%d" % keep)
        return head

    def record_bytes(self, record: DecisionRecord) -> bytes:
        """The record as :meth:`decisions_command` writes it (the first record of a names
        list new to this process spelt its names out, so its bytes differ from these:
        a compare-and-set on them then fails, and the caller reads)."""
        if self.record_layout == "compact":
            return encode_compact_decision(record, self.feature_names)[0]
        return encode_decision(record, self.record_layout)

    def names_key(self, ref: bytes) -> bytes:
        """The key of a feature names list (``compact`` records)."""
        return b"%s:fn:%s" % (self.ns_bytes, ref.hex().encode())

    def resolve_names(self, err: MissingFeatureNames, blob: bytes | None,
                      field: str = "decision_id") -> None:
        """Hold the names list a record refers to, as read from Redis (``blob``: None
        when the key is gone); a record whose names are gone or damaged is corrupt."""
        if blob is None:
            raise CorruptRecord(field, "decision", f"its feature names {err.ref.hex()} "
                                                   "are not stored")
        try:
            self.feature_names.learn(err.ref, blob)
        except ValueError as bad:
            raise CorruptRecord(field, "decision", str(bad)) from None

    def updates_command(self, updates: Iterable[tuple[str, bytes | None, bytes, bytes | None]]
                        ) -> tuple[Any, ...]:
        """The arguments of one ``EVAL`` that applies profile updates, each (user, the
        encoded profile as read or None, the new one, its encoded learning-log entry or
        None) a compare-and-set; the reply says per update whether it applied. Empty
        when there is nothing to update."""
        keys: list[bytes] = [b"%s:learn" % self.ns_bytes]
        args: list[bytes] = [b"%d" % USER_INDEX_TTL, self._retention()]
        for user_id, expected, profile, entry in updates:  # bytes: see decisions_command
            keys += (self._k("p", user_id).encode(), self._k("ulz", user_id).encode())
            args += (b"0" if expected is None else b"1" + expected, profile, entry or b"")
        return (UPDATE_PROFILES, len(keys), *keys, *args) if len(keys) > 1 else ()

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        data = _b(self.redis.get(self._k("d", decision_id)))
        if data is None:
            return None
        try:
            return decode_decision(data, names=self.feature_names)
        except MissingFeatureNames as err:
            self.resolve_names(err, _b(self.redis.get(self.names_key(err.ref))))
            return decode_decision(data, names=self.feature_names)

    # ---- feedback -------------------------------------------------------------------
    def commit_feedback(self, decision_id: str, idempotency_key: str, change: FeedbackChange,
                        ttl_seconds: float, fingerprint: str = "") -> FeedbackCommit:
        commit = run_sync(feedback_steps(self, decision_id, idempotency_key, change,
                                         ttl_seconds, fingerprint),
                          self.redis, self._commit_feedback)
        self.replicated()  # a duplicate too: the first attempt may not have been
        return commit

    def save_shown_decision(self, record: DecisionRecord, ttl_seconds: float,
                            idempotency_key: str, change: FeedbackChange,
                            fingerprint: str = "", as_read: bytes | None = None,
                            compare: bool = False) -> FeedbackCommit:
        """With ``compare``: the record with its outcome, applied to ``as_read``, in one
        script (``SAVE_SHOWN_DECISIONS``) if the profile is still that, else
        :class:`ProfileChangedError` with the profile as it is now. Without (or when the
        record or its key exists already): the record, then its outcome's compare-and-set
        taking the record just stored and the cached profile for its first attempt."""
        if compare:
            effects = change(msgspec.structs.replace(record, outcomes={}),
                             decode_profile(as_read) if as_read is not None else None)
            (reply,) = self.redis.eval(*self.shown_decisions_command(
                [(effects, ttl_seconds, idempotency_key, fingerprint, as_read)]))
            if isinstance(reply, bytes):  # the profile changed: as it is now
                now = reply[1:] if reply[:1] == b"1" else None
                self._remember(record.user_id, now)
                raise ProfileChangedError(ProfileChanged(now))
            if reply:
                if effects.profile is not None:
                    self._remember(record.user_id, encode(effects.profile))
                self.replicated()
                return FeedbackCommit(False, effects)
        self.save_decision(record, ttl_seconds)
        hit, profile = self.cached_profile(record.user_id)
        guess = (self.record_bytes(record), record, profile) if hit else None
        commit = run_sync(feedback_steps(self, record.decision_id, idempotency_key, change,
                                         ttl_seconds, fingerprint, guess),
                          self.redis, self._commit_feedback)
        self.replicated()
        return commit

    def feedback_script_args(self, dkey: str, ikey: str, pkey: str, data: bytes,
                             pdata: bytes | None, effects: FeedbackEffects,
                             idempotency_key: str, fingerprint: str, ttl_seconds: float
                             ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``COMMIT_FEEDBACK`` for these effects (sync and async clients)."""
        user = effects.decision.user_id
        keys = [dkey, ikey, pkey, f"{self.ns}:learn", self._k("ulz", user),
                self._k("ukz", user)]
        increments: list[Any] = []
        for experiment, deltas in counter_deltas(effects.arm_increments).items():
            keys.append(self._k("arms", experiment))
            for name, delta in deltas.items():
                increments += [len(keys), name, repr(float(delta))]
        args = [data, b"0" if pdata is None else b"1" + pdata,
                encode_decision_update(effects.decision, data, self.record_layout),
                encode(effects.profile) if effects.profile is not None else b"",
                fingerprint, max(1, int(ttl_seconds)),
                max(int(ttl_seconds), USER_INDEX_TTL), encode_event(effects.event), idempotency_key,
                self._retention(), len(increments) // 3, *increments]
        return keys, args

    def add_counters(self, name: str, deltas: Mapping[str, float]) -> dict[str, float]:
        key = self._k("counters", name)
        pipe = self.redis.pipeline()  # MULTI: the increments and the read together
        for field, delta in deltas.items():
            pipe.hincrbyfloat(key, field, delta)
        pipe.hgetall(key)
        raw = cast(dict[bytes, bytes], pipe.execute()[-1])
        return {field.decode(): float(value) for field, value in raw.items()}

    def arm_counts(self, experiment: str) -> dict[str, ArmCounts]:
        raw = cast(dict[bytes, bytes], self.fast.hgetall(self._k("arms", experiment)))
        return counts_from_fields({name.decode(): float(value) for name, value in raw.items()})

    def mark_split(self, experiment: str, fingerprint: str) -> None:
        self._mark_split(keys=[self._k("split", experiment), self._k("arms", experiment)],
                         args=[fingerprint])

    def split_mark(self, experiment: str) -> tuple[str, dict[str, float]] | None:
        raw = cast(dict[bytes, bytes], self.fast.hgetall(self._k("split", experiment)))
        if b"=" not in raw:
            return None
        return raw[b"="].decode(), {arm.decode(): float(value)
                                    for arm, value in raw.items() if arm != b"="}

    def forgotten_since(self, cursor: str, limit: int = 1000) -> tuple[list[str], str]:
        """Pseudonyms of the users other processes forgot after ``cursor`` (oldest first,
        at most ``limit``), and the cursor after them; ``""``: none, the cursor now."""
        key = f"{self.ns}:forgotten"
        if not cursor:
            newest = cast(list[tuple[bytes, Any]], self.redis.xrevrange(key, count=1))
            return [], newest[0][0].decode() if newest else "0-0"
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       self.redis.xrange(key, min=f"({cursor}", max="+", count=limit))
        if not entries:
            return [], cursor
        token = self._token.encode()  # (a damaged entry is stepped over, never stuck on)
        return ([fields[b"u"].decode(errors="replace") for _, fields in entries
                 if fields.get(b"by") != token and b"u" in fields],
                entries[-1][0].decode())

    # ---- learning log and model snapshots ----------------------------------------------
    def learning_events(self, after: str, limit: int
                        ) -> list[tuple[str, LearningEvent | None]]:
        start = f"({after}" if after else "-"
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       self.redis.xrange(f"{self.ns}:learn", min=start, max="+", count=limit))
        return [(eid.decode(), decode_event(fields.get(b"e", b""))) for eid, fields in entries]

    def trim_learning_log(self, consumer: str, offset: str) -> int:
        """XTRIM the stream below the oldest offset still needed, and to
        :attr:`log_max_entries` whatever is needed.

        Needed: the snapshot's offset (a process that starts loads the snapshot and
        replays after it) and every live consumer's (``{ns}:consumers``, refreshed at
        every snapshot; a consumer silent for ``CONSUMER_TTL`` seconds is dead).
        """
        now_ms = int(cast(tuple[int, int], self.redis.time())[0]) * 1000
        consumers = f"{self.ns}:consumers"
        self.redis.hset(consumers, consumer, f"{offset}|{now_ms}")
        needed: list[str] = []
        for name, value in cast(dict[bytes, bytes], self.redis.hgetall(consumers)).items():
            their_offset, _, seen_ms = value.decode().partition("|")
            if now_ms - int(seen_ms or 0) > CONSUMER_TTL * 1000:
                self.redis.hdel(consumers, name)
                continue
            needed.append(their_offset)
        saved = _b(self.redis.hget(f"{self.ns}:models", "offset"))
        needed.append(saved.decode() if saved is not None else "")
        stream, trimmed = f"{self.ns}:learn", 0
        if "" not in needed:  # else someone has applied nothing yet: all is needed
            trimmed = self._trim(stream, minid=min(needed, key=_stream_id))
        if self.log_max_entries:  # needed or not, never more than the cap
            trimmed += self._trim(stream, maxlen=self.log_max_entries)
        return trimmed

    def _trim(self, stream: str, **bound: Any) -> int:
        """Approximate XTRIMs (whole stream nodes) until nothing more goes, each of at
        most :data:`TRIM_BATCH` entries: Redis's default LIMIT stopped a call at 10,000,
        which a log taking more between two trims outgrew for ever, and no limit at all
        would hold Redis for as long as a large backlog takes to free."""
        total = 0
        while True:  # (a call drops whole nodes: fewer than the limit says nothing)
            dropped = int(self.redis.xtrim(stream, limit=TRIM_BATCH, **bound))
            if not dropped:
                return total
            total += dropped

    def save_models(self, blob: bytes, offset: str) -> None:
        self.redis.hset(f"{self.ns}:models", mapping={"blob": blob, "offset": offset})

    def load_models(self) -> tuple[bytes, str] | None:
        blob, offset = cast(list[bytes | None],
                            self.redis.hmget(f"{self.ns}:models", ["blob", "offset"]))
        if blob is None:
            return None
        return blob, (offset or b"").decode()

    def models_offset(self) -> str:
        saved = _b(self.redis.hget(f"{self.ns}:models", "offset"))
        return saved.decode() if saved is not None else ""

    def hold_learner_lease(self, holder: str, seconds: float) -> bool:
        return bool(self._hold_lease(keys=[f"{self.ns}:learner"],
                                     args=[holder, max(1, int(seconds * 1000))]))

    def release_learner_lease(self, holder: str) -> None:
        self._release_lease(keys=[f"{self.ns}:learner"], args=[holder])

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()
        self.fast.close()


def _new_epoch() -> int:
    """A catalogue version key's start, should the change create it: a random epoch in
    the high bits, no change counted yet (CATALOGUE_EPOCH_BITS)."""
    return (1 + secrets.randbelow(CATALOGUE_EPOCHS - 1)) << CATALOGUE_EPOCH_BITS
