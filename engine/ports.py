"""What the engine needs from storage; adapters/ implements it (memory, Redis).

The engine depends on this protocol only, never on a concrete client. Every
method that changes state is atomic: a store applies a pure ``change`` function
inside its own transaction (a lock, or Redis WATCH/MULTI) and retries it on a
conflict, so the function may run more than once and must not have side effects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from engine.learning.log import LearningLog
from engine.records import ArmCounts, CorruptRecord, DecisionRecord, LearningEvent, Profile

CATALOGUE_REMOVALS_KEPT = 10_000
"""Catalogue versions (change calls) for which a store keeps a removed item's mark (so
that a replica that had the item learns it is gone); a replica further behind than that
reads the whole catalogue again. Without a horizon the marks grew with every item ever
removed (a marketplace's), and every replica's start read them all."""
LEARNING_LOG_MAX_ENTRIES = 1_000_000
"""Entries a shared learning log keeps at most by default, whatever its consumers and
snapshot still need (``arbiter serve --learning-log-max``): a replica or snapshot
further behind misses the oldest, and its models learn from what is left. Without a cap
a log with no snapshot, or with a consumer gone quiet, grew with every event."""


@dataclass
class FeedbackEffects:
    """Everything one acknowledged outcome changes, written in one transaction."""

    decision: DecisionRecord
    profile: Profile | None
    event: LearningEvent
    # (experiment, arm) -> increments of ArmCounts fields
    arm_increments: dict[tuple[str, str], ArmCounts] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackCommit:
    duplicate: bool
    effects: FeedbackEffects | None


@dataclass(frozen=True)
class ProfileChanged:
    """A record not stored with its outcome because its customer's profile had changed
    since it was read (another batch, replica or event): the profile as it is now,
    encoded (None: there is none), on which the decision can be made again."""
    profile: bytes | None


class ProfileChangedError(Exception):
    """A record with its outcome not stored: its customer's profile is no longer as the
    decision read it (``changed``: the profile as it is now)."""

    def __init__(self, changed: ProfileChanged) -> None:
        super().__init__("the customer's profile changed since it was read")
        self.changed = changed


class CatalogueChanges(NamedTuple):
    """What a store's catalogue changed since a version: ``items`` (id -> encoded item,
    b"" for a removed one; None when nothing did) with the items present in the
    catalogue's order (an item goes where it was last added: by the version of that
    change, then by id), and which of them were added, or added again after a removal,
    after that version (``added``); ``everything``: ``items`` is the whole catalogue (a
    version of 0, one the store does not have, or one behind removals whose marks are
    gone), not what changed."""

    version: int
    items: dict[str, bytes] | None
    added: frozenset[str] = frozenset()
    everything: bool = False


Shown = FeedbackCommit | ProfileChanged | None
"""What became of a record sent to be stored with its first outcome: stored (the commit),
not stored because its customer's profile changed, or not stored because its outcome
cannot apply so (None: stored plainly and committed as a Feedback)."""
FeedbackChange = Callable[[DecisionRecord, Profile | None], FeedbackEffects]
Learning = Callable[[Profile], LearningEvent | None]
"""What a profile update logs for the learners (an item interaction), from the profile
as it will be stored; None: nothing."""


class DecisionNotFound(LookupError):
    """No decision with this id within the attribution window."""


class IdempotencyKeyReused(ValueError):
    """The key was already applied on this decision to a different request."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; nothing was changed, the call may be retried."""


class StoreFull(StoreUnavailable):
    """The store refused a write for want of memory (Redis at ``maxmemory`` without
    eviction): nothing was changed; a retry succeeds only once memory is freed."""


class DecisionLogUnavailable(RuntimeError):
    """The decision log could not be rewritten without a user's lines (ForgetProfile):
    what the store held is deleted; forgetting again retries the log."""


def answer_key(user_id: str, request_id: str) -> str:
    """The name under which a Decide ``request_id``'s claim and answer are kept: among the
    customer's feedback keys (what ForgetProfile erases), unambiguous whatever the ids
    hold.

    >>> answer_key("ann", "run-7:12")
    'q|3|ann|run-7:12'
    """
    return f"q|{len(user_id)}|{user_id}|{request_id}"


class DecideIO(Protocol):
    """Decide's store I/O for an asynchronous server: the profile read and the record
    write, each bounded by ``timeout`` seconds (StoreUnavailable past it, or when the
    store cannot be reached). Implementations may batch concurrent calls (one MGET per
    loop turn; a group commit of the records in flight), but a call returns only when its
    own read or write is done.

    A network store's implementation may also offer Feedback's and TrackEvent's
    transactions to be awaited (``commit_feedback(decision_id, key, change, ttl,
    fingerprint, timeout)``, ``update_profile(user_id, change, learning, timeout)``, the
    same semantics as the :class:`Store` methods); the server uses them when present."""

    async def get_profile(self, user_id: str, timeout: float) -> Profile | None: ...

    async def save_decision(self, record: DecisionRecord, ttl_seconds: float,
                            timeout: float) -> None: ...

    async def get_profiles(self, user_ids: Sequence[str], timeout: float
                           ) -> list[Profile | CorruptRecord | None]:
        """Several customers' profiles in one wait (a DecideBatch wave), in order; a
        corrupt one is its CorruptRecord, the others are still read."""
        ...

    async def save_decisions(self, writes: Sequence[tuple[DecisionRecord, float]],
                             timeout: float) -> None:
        """Several records (each with its TTL in seconds), returning when all are stored."""
        ...

    def claim_requests(self, claims: Sequence[tuple[str, str, bytes]],
                       hold_seconds: float, timeout: float
                       ) -> Awaitable[list[bytes | None]]:
        """For each (user, Decide ``request_id``, claim): what is kept for the id (a
        claim or an answer, as :meth:`save_answers` stored it), or None after keeping
        the claim there for ``hold_seconds`` (the caller decides: the check and the
        claim are one step, so of two concurrent calls one decides). Sent when called
        (with the profile reads asked for before the result is awaited: one round trip
        for a network store), awaited later."""
        ...

    def save_answers(self, answers: Sequence[tuple[str, str, bytes, float]],
                     timeout: float) -> Awaitable[None]:
        """Keep each (user, request id, answer, TTL in seconds) in place of its claim,
        erased with the customer by ``forget``. Sent when called (with the records
        saved before it is awaited), awaited later."""
        ...

    def release_requests(self, keys: Sequence[tuple[str, str]]) -> Awaitable[None]:
        """Drop claims that led to no kept answer (nothing recorded, or degraded), so a
        retry decides again. Sent when called (before the answer goes out: a retry that
        follows it finds the id free), awaited later; best effort (a claim left behind
        lapses after its hold)."""
        ...

    async def ping(self, timeout: float) -> bool:
        """True when the store answered within ``timeout`` seconds (readiness)."""
        ...

    async def aclose(self) -> None: ...


class Store(LearningLog, Protocol):
    """Profiles, decisions, bandit statistics and (inherited) the learning log."""

    def get_profile(self, user_id: str) -> Profile | None: ...

    def update_profile(
        self, user_id: str, change: Callable[[Profile | None], Profile],
        learning: Learning | None = None,
    ) -> Profile:
        """Apply ``change`` atomically; the entry ``learning`` makes of the new profile
        is appended to the learning log in the same transaction. A change that leaves
        the profile as stored (a duplicate event) need not be written."""
        ...

    def forget(self, user_id: str) -> int:
        """Delete the user's profile, decisions, feedback keys and learning-log entries,
        and log a :data:`~engine.records.FORGET` entry for the recommender."""
        ...

    def forgotten_since(self, cursor: str, limit: int = 1000) -> tuple[list[str], str]:
        """Pseudonyms (:func:`~engine.records.pseudonym`) of the users that other processes
        sharing the store forgot after ``cursor``, oldest first (at most ``limit``), and
        the cursor after them; ``cursor`` ``""``: none, and the cursor now. What each
        process's decision log erases (:meth:`engine.service.Arbiter.sync`)."""
        ...

    def change_items(self, upserts: Mapping[str, bytes], removals: Iterable[str],
                     lasting: Collection[str] = ()) -> int:
        """Upsert encoded catalogue items and remove others (shared by replicas);
        returns the catalogue's new version. A removal's mark is kept
        ``CATALOGUE_REMOVALS_KEPT`` versions, or for good when its id is in ``lasting``
        (the ruleset's file has the item: forgetting the removal would bring it back)."""
        ...

    def catalogue_changes(self, known_version: int) -> CatalogueChanges:
        """What changed since ``known_version``; everything when it is 0 or newer than
        the store's; ``items`` None when it is current."""
        ...

    def save_decision(self, record: DecisionRecord, ttl_seconds: float) -> None: ...

    def get_decision(self, decision_id: str) -> DecisionRecord | None: ...

    def commit_feedback(
        self, decision_id: str, idempotency_key: str, change: FeedbackChange,
        ttl_seconds: float, fingerprint: str = "",
    ) -> FeedbackCommit:
        """Apply ``change`` once per key; raises DecisionNotFound for an unknown id. The
        key is kept with the request's ``fingerprint`` as long as its decision is (for
        ``ttl_seconds`` where the decision's own expiry cannot be read): the same key
        again with the same fingerprint is a duplicate, with another one
        IdempotencyKeyReused."""
        ...

    def save_shown_decision(
        self, record: DecisionRecord, ttl_seconds: float, idempotency_key: str,
        change: FeedbackChange, fingerprint: str = "", as_read: bytes | None = None,
        compare: bool = False,
    ) -> FeedbackCommit:
        """:meth:`save_decision` of a new record, then :meth:`commit_feedback` of its
        first outcome (DecideBatch's ``record_impressions``); a store that can do both in
        one step applies ``change`` to ``record`` itself (nothing read back) and stores
        it with its outcome. With ``compare``, only if the customer's profile is still
        ``as_read`` (what :meth:`profile_bytes` gave when the decision was made): else
        nothing is stored and :class:`ProfileChangedError` carries the profile as it is
        now (decide again on it, so that caps count what was sent meanwhile)."""
        ...

    def profile_bytes(self, user_id: str) -> bytes | None:
        """The customer's profile as stored, encoded (None: none): what
        :meth:`save_shown_decision` compares."""
        ...

    def arm_counts(self, experiment: str) -> dict[str, ArmCounts]: ...

    def mark_split(self, experiment: str, fingerprint: str) -> None:
        """An experiment's allocation served with ``fingerprint`` (a fixed split's shares,
        or Thompson sampling: engine.experiments.splits): if the store last saw another,
        each arm's exposures so far become the new phase's baseline; one never seen
        starts with none. One atomic step, so replicas reloading together mark a change
        once."""
        ...

    def split_mark(self, experiment: str) -> tuple[str, dict[str, float]] | None:
        """The fingerprint and baseline :meth:`mark_split` keeps (None: never marked)."""
        ...

    def add_counters(self, name: str, deltas: Mapping[str, float]) -> dict[str, float]:
        """Add ``deltas`` to the shared counters ``name`` and return all their totals
        (one atomic step; empty deltas just read). Population statistics shared by
        replicas, such as engagement by hour of the week."""
        ...

    def ping(self) -> bool:
        """True when the store can be reached (health checks)."""
        ...

    @property
    def blocking(self) -> bool:
        """True when calls wait on the network (a server runs them off its event loop);
        False for a store in process memory (calls are short and run inline)."""
        ...

    def decide_io(self) -> DecideIO:
        """Asynchronous Decide I/O on this store, for a server's event loop."""
        ...

    def close(self) -> None: ...


Clock = Callable[[], float]
StoreFactory = Callable[[Clock], Store]
"""A new store on a given clock: how tools that need a private store get one."""
