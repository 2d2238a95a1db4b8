"""What the learning-log consumer needs from storage: an ordered log and a snapshot.

Every :class:`engine.ports.Store` is one; the consumer depends on this narrower
protocol only, so the learning layer never sees profiles, decisions or a client.
"""

from __future__ import annotations

from typing import Protocol

from engine.records import LearningEvent


class LearningLog(Protocol):
    """Acknowledged outcomes in log order, and the models' snapshot with its offset."""

    def learning_events(self, after: str, limit: int
                        ) -> list[tuple[str, LearningEvent | None]]:
        """Learning events logged after offset ``after`` ("" for the start), in order;
        None for an entry that does not decode (consumers step over it)."""
        ...

    def save_models(self, blob: bytes, offset: str) -> None: ...

    def load_models(self) -> tuple[bytes, str] | None: ...

    def trim_learning_log(self, consumer: str, offset: str) -> int:
        """Record that ``consumer`` has applied the log up to ``offset``; drop the entries
        that every live consumer and the saved snapshot are past, and the oldest beyond
        the store's cap (``engine.ports.LEARNING_LOG_MAX_ENTRIES``). Returns how many."""
        ...
