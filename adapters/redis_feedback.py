"""Feedback's compare-and-set on Redis as one protocol, driven by the synchronous client
(the library's store) or the server's shared round trips on its loop: the steps are
written once.

:func:`feedback_steps` is a generator that yields what it needs from Redis, ``("get",
keys)`` (a pipeline of GETs, answered with the values) or ``("script", (keys, args))``
(``COMMIT_FEEDBACK``, answered with 1 or 0 on a conflict), and returns the
:class:`~engine.ports.FeedbackCommit`; :func:`run_sync` and :func:`run_batched` feed it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

from adapters.redis_scripts import COMMIT_FEEDBACK, MAX_COMMIT_ATTEMPTS
from engine.ports import (
    DecisionNotFound,
    FeedbackChange,
    FeedbackCommit,
    IdempotencyKeyReused,
    StoreUnavailable,
)
from engine.records import (
    DecisionRecord,
    MissingFeatureNames,
    decode_decision,
    decode_profile,
    encode,
)

if TYPE_CHECKING:
    from adapters.redis_round_trips import RoundTrips
    from adapters.redis_store import RedisStore

Step = tuple[str, Any]
Steps = Generator[Step, Any, FeedbackCommit]
Guess = tuple[bytes, DecisionRecord, bytes | None]
"""What the first attempt may take for its reads: the record as stored (and decoded),
the customer's profile as stored (None: none)."""


def feedback_steps(store: RedisStore, decision_id: str, idempotency_key: str,
                   change: FeedbackChange, ttl_seconds: float, fingerprint: str,
                   guess: Guess | None = None) -> Steps:
    """Read the decision and the key, then the profile; compute the effects; write them
    with the script if nothing read has changed; again on a conflict. With a ``guess``,
    the first attempt reads nothing: it computes from the guess and the key taken as
    unused, and the script's comparison (record, key, profile) decides."""
    dkey, ikey = store.key("d", decision_id), store.key("k", idempotency_key)
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        read = guess if attempt == 0 and guess is not None else (
            yield from _read(store, dkey, ikey, decision_id, idempotency_key, fingerprint))
        if read is None:  # applied before under this key
            return FeedbackCommit(True, None)
        data, decision, pdata = read
        pkey = store.key("p", decision.user_id)
        effects = change(decision, decode_profile(pdata) if pdata is not None else None)
        script = store.feedback_script_args(dkey, ikey, pkey, data, pdata, effects,
                                            idempotency_key, fingerprint, ttl_seconds)
        if (yield ("script", script)):
            if effects.profile is not None:
                store.remember_profile(decision.user_id, encode(effects.profile))
            return FeedbackCommit(False, effects)
    raise StoreUnavailable(f"feedback on {decision_id}: still conflicting after "
                           f"{MAX_COMMIT_ATTEMPTS} attempts")


def _read(store: RedisStore, dkey: str, ikey: str, decision_id: str, idempotency_key: str,
          fingerprint: str) -> Generator[Step, Any, Guess | None]:
    """The record as stored (and decoded) and its customer's profile; None when the key
    was applied before (the same request: a duplicate)."""
    data, applied = cast(list[bytes | None], (yield ("get", [dkey, ikey])))
    if data is None:
        raise DecisionNotFound(decision_id)
    if applied is not None:
        if applied.decode() != fingerprint:
            raise IdempotencyKeyReused(idempotency_key)
        return None
    try:
        decision = decode_decision(data, names=store.feature_names)
    except MissingFeatureNames as err:  # a names list this process has not read yet
        (blob,) = cast(list[bytes | None], (yield ("get", [store.names_key(err.ref)])))
        store.resolve_names(err, blob)
        decision = decode_decision(data, names=store.feature_names)
    (pdata,) = cast(list[bytes | None], (yield ("get", [store.key("p", decision.user_id)])))
    return data, decision, pdata


def run_sync(steps: Steps, client: Any, script: Any) -> FeedbackCommit:
    """Drive the steps on redis-py's synchronous client (``script``: its Script)."""
    reply: Any = None
    while True:
        try:
            kind, arg = steps.send(reply)
        except StopIteration as done:
            return cast(FeedbackCommit, done.value)
        if kind == "get":
            pipe = client.pipeline(transaction=False)
            for key in arg:
                pipe.get(key)
            reply = pipe.execute()
        else:
            keys, args = arg
            reply = script(keys=keys, args=args)


async def run_batched(steps: Steps, trips: RoundTrips) -> FeedbackCommit:
    """Drive the steps on the server's shared round trips (adapters.redis_round_trips):
    each read an ``MGET`` and the script an ``EVAL`` riding with the other calls in flight
    (confirmed by the round trip's ``WAIT`` when the store has ``replicas``)."""
    reply: Any = None
    while True:
        try:
            kind, arg = steps.send(reply)
        except StopIteration as done:
            return cast(FeedbackCommit, done.value)
        if kind == "get":
            reply = await trips.command("MGET", *arg)
        else:
            keys, args = arg
            reply = await trips.command("EVAL", COMMIT_FEEDBACK, len(keys), *keys, *args,
                                        waited=True)
