"""The embedded store: everything in process memory, one lock. The default.

Nothing survives a restart; use :class:`adapters.redis_store.RedisStore` for that.
Records are kept encoded (MessagePack) so callers never share mutable state with
the store, exactly as with Redis; decision records in the ``compact`` layout, their
recurring feature names lists in a table of their own (:mod:`engine.feature_names`).
"""

from __future__ import annotations

import heapq
import struct
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

import msgspec

from engine.feature_names import FeatureNameSets
from engine.ports import (
    CATALOGUE_REMOVALS_KEPT,
    LEARNING_LOG_MAX_ENTRIES,
    CatalogueChanges,
    DecisionNotFound,
    FeedbackChange,
    FeedbackCommit,
    FeedbackEffects,
    IdempotencyKeyReused,
    Learning,
    ProfileChanged,
    ProfileChangedError,
    Shown,
    answer_key,
)
from engine.records import (
    FORGET,
    ArmCounts,
    CorruptRecord,
    DecisionRecord,
    LearningEvent,
    MissingFeatureNames,
    Profile,
    counter_deltas,
    counts_from_fields,
    decode_decision,
    decode_profile,
    encode,
    encode_compact_decision,
    encode_decision_update,
    pseudonym,
)

T = TypeVar("T")


DECISION, KEY, PROFILE, NAMES, ANSWER = 0, 1, 2, 3, 4
"""What an entry of the expiry heap stands for."""

_POSITION = struct.Struct("q")
"""One learning-log position in a customer's index (native int64, as ``array("q")`` reads)."""

NAMES_KEPT_BEYOND = 86400.0
"""Seconds a feature names list outlives the last record that refers to it (as Redis)."""


class MemoryStore:
    """A :class:`~engine.ports.Store` in a few dicts."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 log_max_entries: int = LEARNING_LOG_MAX_ENTRIES,
                 profile_retention: float = 0.0) -> None:
        self.clock = clock
        self.log_max_entries = log_max_entries
        """The learning log's cap (0: none), as the Redis store's."""
        self.profile_retention = profile_retention
        """Seconds a profile is kept after its last change (0: for ever), as Redis's."""
        self._profile_expiry: dict[str, float] = {}  # with a retention: when each goes
        self._lock = threading.RLock()
        self._profiles: dict[str, bytes] = {}
        self._decisions: dict[str, tuple[bytes, float, str]] = {}  # record, expiry, user
        # compact records' feature names lists (engine.feature_names): id -> list, expiry
        self._names: dict[bytes, tuple[bytes, float]] = {}
        self.feature_names = FeatureNameSets()
        # per-customer indexes: dicts of atomic keys and bytearrays, which the cyclic
        # collector does not track (a set or an array per customer it would walk at every
        # full collection: a pause that grows with the customers)
        self._user_decisions: dict[str, dict[str, None]] = {}
        self._keys: dict[str, tuple[float, str]] = {}  # key -> (expiry, fingerprint)
        # Decide request ids (engine.ports.answer_key) -> (expiry, claim or answer)
        self._answers: dict[str, tuple[float, bytes]] = {}
        # (expiry, DECISION, KEY, PROFILE, NAMES or ANSWER, id, user): what to drop when, as
        # Redis TTLs would; an entry whose record was replaced or forgotten since is skipped
        self._expiries: list[tuple[float, int, str, str]] = []
        self._arms: dict[str, dict[str, float]] = {}  # experiment -> {arm}:{field} -> sum
        self._splits: dict[str, tuple[str, dict[str, float]]] = {}  # experiment -> its phase
        self._counters: dict[str, dict[str, float]] = {}  # add_counters
        self._consumers: dict[str, int] = {}  # consumer -> the log offset it has applied
        self._log: list[LearningEvent | None] = []  # None: an entry erased by forget
        self._log_owners: list[str | None] = []  # whose entry each is (None: nobody's)
        # user -> positions of their entries (arrays: not walked by the cyclic collector)
        self._user_log: dict[str, bytearray] = {}  # the positions, packed (_POSITION)
        self._user_keys: dict[str, dict[str, None]] = {}  # user -> their idempotency keys
        self._log_base = 0  # entries before this offset were trimmed
        self._snapshot: tuple[bytes, str] | None = None
        self._lease: tuple[str, float] = ("", 0.0)  # the learner lease: holder, until
        # id -> (version, version it was last added at (0: removed), item; b"": removed),
        # in the order of their versions (a change moves its id to the end): what changed
        # since a version is a walk from the end
        self._items: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()
        self._items_gone: OrderedDict[str, int] = OrderedDict()  # removed -> at, in order
        self._items_purged = 0  # the newest version whose removals' marks are deleted
        self.removals_kept = CATALOGUE_REMOVALS_KEPT  # (versions: a removal's mark)
        self._items_version = 0

    def get_profile(self, user_id: str) -> Profile | None:
        data = self.profile_bytes(user_id)
        return decode_profile(data) if data is not None else None

    def profile_bytes(self, user_id: str) -> bytes | None:
        """The profile as stored (None: none, or past its retention)."""
        data = self._profiles.get(user_id)
        if data is None:
            return None
        expires = self._profile_expiry.get(user_id)
        if expires is not None and expires < self.clock():  # past its retention
            return None
        return data

    def _put_profile(self, user_id: str, data: bytes, now: float) -> None:
        """Store a profile; with a retention, it goes that long after this change."""
        self._profiles[user_id] = data
        if self.profile_retention > 0:
            if user_id not in self._profile_expiry:  # one heap entry per profile, moved
                heapq.heappush(self._expiries,  # on when it comes due (see _expire)
                               (now + self.profile_retention, PROFILE, user_id, user_id))
            self._profile_expiry[user_id] = now + self.profile_retention
        else:  # kept for ever, as a Redis SET without a TTL
            self._profile_expiry.pop(user_id, None)

    def update_profile(self, user_id: str, change: Callable[[Profile | None], Profile],
                       learning: Learning | None = None) -> Profile:
        with self._lock:
            now = self.clock()
            self._expire(now)
            before = self.get_profile(user_id)
            profile = change(before)
            stored = encode(profile)
            if before is not None and stored == self._profiles[user_id]:
                return profile  # nothing changed (a duplicate event): nothing to write
            event = learning(profile) if learning is not None else None
            self._put_profile(user_id, stored, now)
            if event is not None:
                self._append(user_id, event)
            return profile

    def _append(self, user_id: str | None, event: LearningEvent) -> None:
        if user_id is not None:
            positions = self._user_log.get(user_id)
            if positions is None:
                positions = self._user_log[user_id] = bytearray()
            positions += _POSITION.pack(self._log_base + len(self._log))
        self._log.append(event)
        self._log_owners.append(user_id)

    def change_items(self, upserts: Mapping[str, bytes], removals: Iterable[str],
                     lasting: Collection[str] = ()) -> int:
        with self._lock:
            self._items_version += 1
            version, removed = self._items_version, set(removals)
            for item_id, data in upserts.items():
                if item_id in removed:
                    continue
                held = self._items.get(item_id)
                since = held[1] if held is not None and held[1] else version
                self._items[item_id] = (version, since, data)
                self._items.move_to_end(item_id)
                self._items_gone.pop(item_id, None)
            for item_id in removed:
                self._items[item_id] = (version, 0, b"")
                self._items.move_to_end(item_id)
                self._items_gone.pop(item_id, None)
                if item_id not in lasting:
                    self._items_gone[item_id] = version
            gone = self._items_gone  # (the marks past the horizon, oldest first)
            while gone and next(iter(gone.values())) <= version - self.removals_kept:
                item_id, self._items_purged = gone.popitem(last=False)
                del self._items[item_id]
            return version

    def catalogue_changes(self, known_version: int) -> CatalogueChanges:
        with self._lock:
            version = self._items_version
            if known_version == version:
                return CatalogueChanges(version, None)
            if not 0 < known_version <= version or known_version < self._items_purged:
                return CatalogueChanges(version, {  # (new, the store reset, or behind
                    # removals whose marks are gone; in one process: rare, sorted then)
                    k: data for _, k, data in sorted(
                        (since, k, data) for k, (_, since, data) in self._items.items())},
                    everything=True)
            changed = []  # O(changes since), not O(catalogue)
            for item_id, (at, since, data) in reversed(self._items.items()):
                if at <= known_version:
                    break
                changed.append((since, item_id, data))
            changed.sort()
            return CatalogueChanges(version, {k: data for _, k, data in changed}, frozenset(
                k for since, k, _ in changed if since > known_version))

    def forget(self, user_id: str) -> int:
        """The profile, the user's decisions, feedback keys and learning-log entries (erased
        in place, so every consumer's offset stays valid)."""
        with self._lock:
            expires = self._profile_expiry.pop(user_id, None)
            deleted = int(self._profiles.pop(user_id, None) is not None  # not if past its
                          and (expires is None or expires >= self.clock()))  # retention
            for decision_id in self._user_decisions.pop(user_id, {}):
                deleted += int(self._decisions.pop(decision_id, None) is not None)
            for key in self._user_keys.pop(user_id, {}):
                self._keys.pop(key, None)
                self._answers.pop(key, None)
            for position in array("q", self._user_log.pop(user_id, b"")):
                if position >= self._log_base:
                    self._log[position - self._log_base] = None
            now = self.clock()  # the recommender drops what it learnt of them too
            self._append(None, LearningEvent("", "", FORGET, now, now, user=pseudonym(user_id)))
            return deleted

    def forgotten_since(self, cursor: str, limit: int = 1000) -> tuple[list[str], str]:
        """None: this store is one process's, whose own forgets are done as they come."""
        return [], cursor

    def save_decision(self, record: DecisionRecord, ttl_seconds: float) -> None:
        with self._lock:
            self._save_decision(record, ttl_seconds, self.clock())

    def save_shown_decision(self, record: DecisionRecord, ttl_seconds: float,
                            idempotency_key: str, change: FeedbackChange,
                            fingerprint: str = "", as_read: bytes | None = None,
                            compare: bool = False) -> FeedbackCommit:
        """:meth:`save_decision` and :meth:`commit_feedback` in one step under the lock:
        the record is stored with its outcome (``change`` applied to it and the
        customer's profile as stored now), never without it; with ``compare``, only if
        the profile is still ``as_read`` (else :class:`ProfileChangedError`)."""
        with self._lock:
            now = self.clock()
            if compare:
                current = self.profile_bytes(record.user_id)
                if current is not as_read and current != as_read:
                    raise ProfileChangedError(ProfileChanged(current))
            effects = change(record, self.get_profile(record.user_id))
            self._save_decision(effects.decision, ttl_seconds, now)
            self._apply(effects, idempotency_key, fingerprint, now,
                        self._decisions[record.decision_id][1])
            return FeedbackCommit(False, effects)

    def _save_decision(self, record: DecisionRecord, ttl_seconds: float, now: float) -> None:
        """Store a record (under the lock)."""
        self._expire(now)
        expires = now + ttl_seconds
        data, names = encode_compact_decision(record, self.feature_names)
        if names is not None:  # kept as long as the records that refer to it
            ref, blob = names
            held = self._names.get(ref)
            until = expires + NAMES_KEPT_BEYOND
            if held is None:  # one heap entry per list, moved on when due
                heapq.heappush(self._expiries, (until, NAMES, ref.hex(), ""))
            if held is None or until > held[1] + 60:  # (at most once a minute)
                self._names[ref] = (blob, until)
        self._decisions[record.decision_id] = (data, expires, record.user_id)
        self._user_decisions.setdefault(record.user_id, {})[record.decision_id] = None
        heapq.heappush(self._expiries, (expires, DECISION, record.decision_id,
                                        record.user_id))

    def _expire(self, now: float) -> None:
        """Drop the decisions, idempotency keys and profiles whose time has passed, as
        Redis TTLs would: O(log n) each, however many are stored (never a scan of them
        all)."""
        expiries = self._expiries
        while expiries and expiries[0][0] < now:
            expires, kind, name, user_id = heapq.heappop(expiries)
            if kind == PROFILE:
                due = self._profile_expiry.get(name)
                if due is None:  # kept for ever since, or forgotten
                    continue
                if due >= now:  # changed since: due later, looked at again then
                    heapq.heappush(expiries, (due, PROFILE, name, name))
                    continue
                del self._profile_expiry[name]
                self._profiles.pop(name, None)
                continue
            if kind == NAMES:
                ref = bytes.fromhex(name)
                held = self._names.get(ref)
                if held is not None and held[1] >= now:  # referred to since: due later
                    heapq.heappush(expiries, (held[1], NAMES, name, ""))
                elif held is not None:
                    del self._names[ref]
                continue
            table: (dict[str, tuple[float, str]] | dict[str, tuple[bytes, float, str]]
                    | dict[str, tuple[float, bytes]])
            index, table, at = ((self._user_decisions, self._decisions, 1) if kind == DECISION
                                else (self._user_keys, self._keys, 0) if kind == KEY
                                else (self._user_keys, self._answers, 0))
            entry = table.get(name)
            if entry is None or entry[at] != expires:  # forgotten, or set again since
                continue
            del table[name]
            names = index.get(user_id)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del index[user_id]

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        entry = self._decisions.get(decision_id)
        if entry is None or entry[1] < self.clock():
            return None
        try:
            return decode_decision(entry[0], names=self.feature_names)
        except MissingFeatureNames as err:  # dropped from the bounded cache: the table
            held = self._names.get(err.ref)
            if held is None:
                raise CorruptRecord("decision_id", "decision", f"its feature names "
                                    f"{err.ref.hex()} are not stored") from None
            self.feature_names.learn(err.ref, held[0])
            return decode_decision(entry[0], names=self.feature_names)

    def commit_feedback(self, decision_id: str, idempotency_key: str, change: FeedbackChange,
                        ttl_seconds: float, fingerprint: str = "") -> FeedbackCommit:
        with self._lock:
            now = self.clock()
            decision = self.get_decision(decision_id)
            if decision is None:
                raise DecisionNotFound(decision_id)
            expires, applied = self._keys.get(idempotency_key, (None, ""))
            if expires is not None and expires >= now:
                if applied != fingerprint:
                    raise IdempotencyKeyReused(idempotency_key)
                return FeedbackCommit(True, None)
            effects = change(decision, self.get_profile(decision.user_id))
            original, expires_at, user_id = self._decisions[decision_id]
            self._decisions[decision_id] = (
                encode_decision_update(effects.decision, original, "compact"), expires_at,
                user_id)
            self._apply(effects, idempotency_key, fingerprint, now, expires_at)
            self._expire(now)
            return FeedbackCommit(False, effects)

    def _apply(self, effects: FeedbackEffects, idempotency_key: str, fingerprint: str,
               now: float, expires_at: float) -> None:
        """A feedback's effects besides its record, and its key (under the lock)."""
        user_id = effects.decision.user_id
        if effects.profile is not None:
            self._put_profile(user_id, encode(effects.profile), now)
        for experiment, deltas in counter_deltas(effects.arm_increments).items():
            fields = self._arms.setdefault(experiment, {})
            for name, delta in deltas.items():
                fields[name] = fields.get(name, 0.0) + delta
        self._append(user_id, effects.event)
        # the key lives as long as its decision (whose placement may have its own
        # attribution window): past it the decision is gone and nothing can replay
        self._keys[idempotency_key] = (expires_at, fingerprint)
        self._user_keys.setdefault(user_id, {})[idempotency_key] = None
        heapq.heappush(self._expiries, (expires_at, KEY, idempotency_key, user_id))

    # ---- Decide request ids (engine.ports.DecideIO.claim_requests) ------------------------
    def claim_request(self, user_id: str, request_id: str, pending: bytes,
                      hold_seconds: float) -> bytes | None:
        """What is kept for the request id, or None after keeping ``pending`` there."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            key = answer_key(user_id, request_id)
            held = self._answers.get(key)
            if held is not None and held[0] >= now:
                return held[1]
            self._keep_answer(user_id, key, pending, now + hold_seconds)
            return None

    def save_answer(self, user_id: str, request_id: str, answer: bytes,
                    ttl_seconds: float) -> None:
        with self._lock:
            now = self.clock()
            self._keep_answer(user_id, answer_key(user_id, request_id), answer,
                              now + ttl_seconds)

    def release_request(self, user_id: str, request_id: str) -> None:
        with self._lock:
            key = answer_key(user_id, request_id)
            self._answers.pop(key, None)
            keys = self._user_keys.get(user_id)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._user_keys[user_id]

    def _keep_answer(self, user_id: str, key: str, value: bytes, expires: float) -> None:
        self._answers[key] = (expires, value)
        self._user_keys.setdefault(user_id, {})[key] = None
        heapq.heappush(self._expiries, (expires, ANSWER, key, user_id))

    def add_counters(self, name: str, deltas: Mapping[str, float]) -> dict[str, float]:
        with self._lock:
            counters = self._counters.setdefault(name, {})
            for key, delta in deltas.items():
                counters[key] = counters.get(key, 0.0) + delta
            return dict(counters)

    def arm_counts(self, experiment: str) -> dict[str, ArmCounts]:
        with self._lock:
            return counts_from_fields(self._arms.get(experiment, {}))

    def mark_split(self, experiment: str, fingerprint: str) -> None:
        with self._lock:
            seen = self._splits.get(experiment)
            if seen is not None and seen[0] == fingerprint:
                return
            baseline = ({} if seen is None else  # (never seen: the same split all along)
                        {arm: counts.trials for arm, counts in counts_from_fields(
                            self._arms.get(experiment, {})).items() if "@" not in arm})
            self._splits[experiment] = (fingerprint, baseline)

    def split_mark(self, experiment: str) -> tuple[str, dict[str, float]] | None:
        with self._lock:
            seen = self._splits.get(experiment)
            return None if seen is None else (seen[0], dict(seen[1]))

    def learning_events(self, after: str, limit: int
                        ) -> list[tuple[str, LearningEvent | None]]:
        out: list[tuple[str, LearningEvent | None]] = []
        with self._lock:
            position = max(int(after) if after else 0, self._log_base)
            while len(out) < limit and position - self._log_base < len(self._log):
                event = self._log[position - self._log_base]
                position += 1
                if event is not None:  # erased by forget
                    out.append((str(position), event))
        return out

    def trim_learning_log(self, consumer: str, offset: str) -> int:
        """Drop what every consumer of this store and the snapshot have applied."""
        with self._lock:
            self._consumers[consumer] = int(offset or 0)
            snapshot = int(self._snapshot[1] or 0) if self._snapshot else 0
            upto = min(*self._consumers.values(), snapshot)
            if self.log_max_entries:  # needed or not, never more than the cap
                upto = max(upto, self._log_base + len(self._log) - self.log_max_entries)
            drop = max(upto - self._log_base, 0)
            del self._log[:drop]
            self._log_base += drop
            for owner in self._log_owners[:drop]:  # the owners' indexes follow: O(dropped)
                positions = self._user_log.get(owner) if owner is not None else None
                if owner is None or positions is None:
                    continue
                kept = 0  # bytes of positions before the new base (sorted: a prefix)
                while (kept < len(positions)
                       and _POSITION.unpack_from(positions, kept)[0] < self._log_base):
                    kept += _POSITION.size
                if kept == len(positions):
                    del self._user_log[owner]
                else:
                    del positions[:kept]
            del self._log_owners[:drop]
            return drop

    def save_models(self, blob: bytes, offset: str) -> None:
        self._snapshot = (blob, offset)

    def load_models(self) -> tuple[bytes, str] | None:
        return self._snapshot

    def models_offset(self) -> str:
        return self._snapshot[1] if self._snapshot is not None else ""

    def hold_learner_lease(self, holder: str, seconds: float) -> bool:
        with self._lock:
            current, until = self._lease
            now = time.monotonic()
            if current in ("", holder) or now >= until:
                self._lease = (holder, now + seconds)
                return True
            return False

    def release_learner_lease(self, holder: str) -> None:
        with self._lock:
            if self._lease[0] == holder:
                self._lease = ("", 0.0)

    @property
    def blocking(self) -> bool:
        return False

    def decide_io(self) -> MemoryDecideIO:
        return MemoryDecideIO(self)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


class MemoryDecideIO:
    """:class:`~engine.ports.DecideIO` on a :class:`MemoryStore`: the calls are in process
    memory and short, so they run inline on the event loop."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def get_profile(self, user_id: str, timeout: float) -> Profile | None:
        return self.store.get_profile(user_id)

    async def save_decision(self, record: DecisionRecord, ttl_seconds: float,
                            timeout: float) -> None:
        self.store.save_decision(record, ttl_seconds)

    async def get_profiles(self, user_ids: Sequence[str], timeout: float
                           ) -> list[Profile | CorruptRecord | None]:
        profiles: list[Profile | CorruptRecord | None] = []
        for user_id in user_ids:
            try:
                profiles.append(self.store.get_profile(user_id))
            except CorruptRecord as err:
                profiles.append(err)
        return profiles

    async def save_decisions(self, writes: Sequence[tuple[DecisionRecord, float]],
                             timeout: float) -> None:
        for record, ttl_seconds in writes:
            self.store.save_decision(record, ttl_seconds)

    async def get_profile_bytes(self, user_ids: Sequence[str], timeout: float
                                ) -> list[bytes | None]:
        return [self.store.profile_bytes(user_id) for user_id in user_ids]

    def save_shown_decisions(self, shown: Sequence[tuple[DecisionRecord, float, str,
                                                         FeedbackChange, str, bytes | None]],
                             timeout: float
                             ) -> tuple[list[bool], Awaitable[list[Shown]]]:
        """Each record stored with its outcome (:meth:`MemoryStore.save_shown_decision`,
        under the lock) if its customer's profile is still as read, else
        :class:`ProfileChanged`; an outcome that cannot apply is left to the caller, as a
        Feedback."""
        included: list[bool] = []
        commits: list[Shown] = []
        for record, ttl, key, change, fingerprint, as_read in shown:
            try:  # (a copy: the caller's record stays as it was decided)
                commits.append(self.store.save_shown_decision(
                    msgspec.structs.replace(record, outcomes={}), ttl, key, change,
                    fingerprint, as_read, compare=True))
            except ProfileChangedError as err:  # (a batch's wave yields between its
                commits.append(err.changed)      # reads and writes: another may write)
            except (LookupError, ValueError):
                included.append(False)
                continue
            included.append(True)
        return included, _ready(commits)

    def claim_requests(self, claims: Sequence[tuple[str, str, bytes]],
                       hold_seconds: float, timeout: float
                       ) -> Awaitable[list[bytes | None]]:
        return _ready([self.store.claim_request(user_id, request_id, pending, hold_seconds)
                       for user_id, request_id, pending in claims])

    def save_answers(self, answers: Sequence[tuple[str, str, bytes, float]],
                     timeout: float) -> Awaitable[None]:
        for user_id, request_id, answer, ttl_seconds in answers:
            self.store.save_answer(user_id, request_id, answer, ttl_seconds)
        return _ready(None)

    def release_requests(self, keys: Sequence[tuple[str, str]]) -> Awaitable[None]:
        for user_id, request_id in keys:
            self.store.release_request(user_id, request_id)
        return _ready(None)

    async def ping(self, timeout: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def _ready(value: T) -> T:
    """An awaitable of what is already done (the in-memory store answers at once)."""
    return value
