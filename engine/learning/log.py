"""What the learning-log consumer needs from storage: an ordered log and a snapshot.

Every :class:`engine.ports.Store` is one; the consumer depends on this narrower
protocol only, so the learning layer never sees profiles, decisions or a client.
"""

from __future__ import annotations

from typing import Protocol

from engine.records import LearningEvent

LEARNING_MODES = ("every", "one")
"""``arbiter serve --learners``: every process learns from the log, or one at a time (the
holder of the store's lease) does and the others adopt its snapshots."""


def offset_key(offset: str) -> tuple[int, ...]:
    """A log offset as a sortable key: Redis stream ids (``ms-seq``) and the memory
    store's positions alike; "" (nothing applied) sorts first.

    A damaged one sorts first too (nothing is adopted from it):

    >>> sorted(["1700-2", "", "1700-10", "999-0"], key=offset_key)
    ['', '999-0', '1700-2', '1700-10']
    >>> offset_key("junk")
    ()
    """
    try:
        return tuple(int(part) for part in offset.split("-")) if offset else ()
    except ValueError:
        return ()


class LearningLog(Protocol):
    """Acknowledged outcomes in log order, and the models' snapshot with its offset."""

    def learning_events(self, after: str, limit: int
                        ) -> list[tuple[str, LearningEvent | None]]:
        """Learning events logged after offset ``after`` ("" for the start), in order;
        None for an entry that does not decode (consumers step over it)."""
        ...

    def save_models(self, blob: bytes, offset: str) -> None: ...

    def load_models(self) -> tuple[bytes, str] | None: ...

    def models_offset(self) -> str:
        """The saved snapshot's log offset ("" when there is none): cheap to ask often."""
        ...

    def hold_learner_lease(self, holder: str, seconds: float) -> bool:
        """Take the learner's lease, or renew it, for ``seconds``: True while ``holder``
        is the one learner (``--learners one``); False while another holds it."""
        ...

    def release_learner_lease(self, holder: str) -> None:
        """Let the lease go now, if ``holder`` has it (another learner takes over at
        once instead of when it expires)."""
        ...

    def trim_learning_log(self, consumer: str, offset: str) -> int:
        """Record that ``consumer`` has applied the log up to ``offset``; drop the entries
        that every live consumer and the saved snapshot are past, and the oldest beyond
        the store's cap (``engine.ports.LEARNING_LOG_MAX_ENTRIES``). Returns how many."""
        ...
