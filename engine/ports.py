"""What the engine needs from storage; adapters/ implements it (memory, Redis).

The engine depends on this protocol only, never on a concrete client. Every
method that changes state is atomic: a store applies a pure ``change`` function
inside its own transaction (a lock, or Redis WATCH/MULTI) and retries it on a
conflict, so the function may run more than once and must not have side effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.learning.log import LearningLog
from engine.records import ArmCounts, DecisionRecord, LearningEvent, Profile


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


FeedbackChange = Callable[[DecisionRecord, Profile | None], FeedbackEffects]


class DecisionNotFound(LookupError):
    """No decision with this id within the attribution window."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; nothing was changed, the call may be retried."""


class Store(LearningLog, Protocol):
    """Profiles, decisions, bandit statistics and (inherited) the learning log."""

    def get_profile(self, user_id: str) -> Profile | None: ...

    def update_profile(
        self, user_id: str, change: Callable[[Profile | None], Profile]
    ) -> Profile: ...

    def forget(self, user_id: str) -> int: ...

    def save_decision(self, record: DecisionRecord, ttl_seconds: float) -> None: ...

    def get_decision(self, decision_id: str) -> DecisionRecord | None: ...

    def commit_feedback(
        self, decision_id: str, idempotency_key: str, change: FeedbackChange,
        ttl_seconds: float,
    ) -> FeedbackCommit:
        """Apply ``change`` once per key; raises DecisionNotFound for an unknown id."""
        ...

    def arm_counts(self, experiment: str) -> dict[str, ArmCounts]: ...

    def ping(self) -> bool:
        """True when the store can be reached (health checks)."""
        ...

    def close(self) -> None: ...


Clock = Callable[[], float]
StoreFactory = Callable[[Clock], Store]
"""A new store on a given clock: how tools that need a private store get one."""
