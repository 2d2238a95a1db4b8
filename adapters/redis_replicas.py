"""Acknowledged means replicated, when asked: Redis's ``WAIT`` after a write.

Redis replicates asynchronously: without this, a write acknowledged just before the
primary dies can be missing on the replica that replaces it (Sentinel failover). The
stores wait for ``replicas`` replicas before acknowledging when configured to.
"""

from __future__ import annotations

from engine.ports import StoreUnavailable


class NotReplicated(StoreUnavailable):
    """Written on the primary, but fewer replicas than asked have it: not acknowledged
    (a retry with the same idempotency key is answered as a duplicate once they do)."""


def wait_command(replicas: int, seconds: float) -> tuple[str, int, int]:
    """Redis's ``WAIT``: block until ``replicas`` replicas have every write this
    connection made, for ``seconds`` at most; it answers how many have."""
    return "WAIT", replicas, max(1, int(seconds * 1000))


def check_replicated(acknowledged: int, replicas: int, seconds: float) -> None:
    if acknowledged < replicas:
        raise NotReplicated(f"redis: written on the primary, but {acknowledged} of the "
                            f"{replicas} replicas asked had it within {seconds:.3f}s")

