"""One mapping from engine errors to gRPC status codes, for every servicer.

Known conditions get their own code and a message naming the field; anything
else is logged with its traceback and answered ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.feedback import ActionNotInDecision, implied_key
from engine.grpc.decoding import Undecodable
from engine.ports import (
    DecisionLogUnavailable,
    DecisionNotFound,
    IdempotencyKeyReused,
    StoreFull,
    StoreUnavailable,
)
from engine.records import CorruptRecord
from engine.requests import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from engine.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
access = logging.getLogger("arbiter.access")
"""One line per RPC (method, status, latency, decision id; never a user id or profile).
Off unless ``arbiter serve --access-log`` sets it to INFO."""
access.setLevel(logging.WARNING)
throttled = ThrottledLog(log)
"""Repeated warnings (an outage seen by every request) once per interval, with a count."""

R = TypeVar("R")


def bad_request(err: InvalidArgument) -> grpc.Status:
    """INVALID_ARGUMENT with the message, and a ``google.rpc.BadRequest`` detail naming the
    field (grpcio-status), for clients that read structured errors.

    >>> status = bad_request(InvalidArgument("limit", "must be between 0 and 100"))
    >>> status.code.name, status.details
    ('INVALID_ARGUMENT', 'limit: must be between 0 and 100')
    """
    violation = error_details_pb2.BadRequest.FieldViolation(field=err.field,
                                                            description=err.message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=str(err), details=[detail]))


def status_of(err: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a known engine error maps to (INTERNAL otherwise)."""
    if isinstance(err, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(err)
    if isinstance(err, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(err)
    if isinstance(err, Aborted):
        return grpc.StatusCode.ABORTED, str(err)
    if isinstance(err, ResourceExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, CorruptRecord):
        throttled.warning(f"corrupt:{method}", "%s: %s", method, err)
        return (grpc.StatusCode.DATA_LOSS,
                f"{err}; ForgetProfile removes what is stored about the customer")
    if isinstance(err, IdempotencyKeyReused):
        implicit = implied_key(str(err.args[0]) if err.args else "")
        if implicit is not None:  # the client sent no key: say what it did send twice
            return (grpc.StatusCode.FAILED_PRECONDITION,
                    f"value: a {implicit} of this action was already reported on this "
                    "decision with another value or item; an outcome counts once per "
                    "decision and action (without an idempotency_key, the decision, action "
                    "and outcome are the key)")
        return (grpc.StatusCode.FAILED_PRECONDITION,
                "idempotency_key: already used on this decision for a different request "
                "(another action, outcome or value); send a new key for a new request")
    if isinstance(err, DecisionNotFound):
        return (grpc.StatusCode.NOT_FOUND,
                f"decision_id: no decision {err.args[0]!r} in the attribution window")
    if isinstance(err, ActionNotInDecision):
        return (grpc.StatusCode.NOT_FOUND,
                f"action_id: {err.args[0]!r} was not part of this decision")
    if isinstance(err, StoreFull):  # (before StoreUnavailable, which it is a kind of)
        throttled.warning(f"full:{method}", "%s: %s", method, err)
        return (grpc.StatusCode.RESOURCE_EXHAUSTED, "profile store is full (Redis at its "
                "maxmemory, without eviction): nothing was stored; retry once it has room")
    if isinstance(err, StoreUnavailable):
        throttled.warning(f"unavailable:{method}", "%s: %s", method, err)
        return grpc.StatusCode.UNAVAILABLE, "profile store unavailable; retry"
    if isinstance(err, DecisionLogUnavailable):
        throttled.warning(f"unavailable:{method}", "%s: %s", method, err)
        return grpc.StatusCode.UNAVAILABLE, f"{err}; retry"
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


DEFAULT_DEADLINE_SECONDS = 10.0
"""The deadline of an RPC whose client sent none (``arbiter serve --default-deadline``)."""
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("deadline")
loop_time = time.monotonic
"""The event loop's clock (asyncio's loops keep time with ``time.monotonic``:
``BaseEventLoop.time``), read without ``asyncio.get_running_loop()``, which makes a
``getpid`` system call on every call on Python 3.11."""


def time_left() -> float:
    """Seconds until the current RPC's deadline (its client's, or the server default)."""
    return _deadline.get() - loop_time()


async def _refuse_undecodable(method: str, request: Undecodable,
                              context: grpc.aio.ServicerContext, metrics: Any) -> None:
    """INVALID_ARGUMENT for bytes that are not the request message; one log line per
    method every ten seconds at most, and a count."""
    throttled.warning(f"undecodable:{method}", "%s: undecodable request: %s", method,
                      request.reason)
    if metrics is not None:
        metrics.undecodable(method)
        metrics.observe(method, grpc.StatusCode.INVALID_ARGUMENT, 0.0)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"request: not a valid {method} request message ({request.reason})")


def rpc(method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]
        ) -> Callable[..., Awaitable[R]]:
    """Run an RPC within its deadline and map engine errors to gRPC status codes (logging
    anything unexpected); count every call by method and code in the servicer's
    ``metrics``, if it has any, and write the access-log line.

    The deadline is the client's, or the servicer's ``default_deadline`` when the client
    sent none; :func:`time_left` tells the store calls inside how long they may wait.
    Past it the RPC stops (its awaits are cancelled) and answers DEADLINE_EXCEEDED.
    Methods named in the servicer's ``untimed`` skip the timer: they never yield to the
    loop (the in-memory store), so it could not interrupt them, or each of their waits
    has a timer of its own from :func:`time_left`.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        response = None
        metrics = getattr(self, "metrics", None)
        if type(request) is Undecodable:
            await _refuse_undecodable(method.__name__, request, context, metrics)
        remaining = context.time_remaining()
        if remaining is None:
            remaining = getattr(self, "default_deadline", DEFAULT_DEADLINE_SECONDS)
        try:
            if remaining <= 0:  # expired while queued: no work at all
                raise TimeoutError
            deadline = loop_time() + remaining
            _deadline.set(deadline)  # this RPC's own task: no reset needed
            if method.__name__ in getattr(self, "untimed", ()):
                # no yield, or every wait timed from the deadline already
                response = await method(self, request, context)
            else:
                async with asyncio.timeout_at(deadline):
                    response = await method(self, request, context)
            return response
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort(code, "deadline exceeded; the request was stopped")
        except Exception as err:
            code, message = status_of(err, method.__name__)
            if isinstance(err, InvalidArgument):
                status = bad_request(err)
                await context.abort(status.code, status.details, status.trailing_metadata)
            await context.abort(code, message)
        finally:
            seconds = time.perf_counter() - started
            if metrics is not None:
                metrics.observe(method.__name__, code, seconds)
            if access.isEnabledFor(logging.INFO):
                decision_id = (getattr(response, "decision_id", "")
                               or getattr(request, "decision_id", ""))
                access.info("%s %s %.2fms%s", method.__name__, code.name, seconds * 1000,
                            f" decision {decision_id}" if decision_id else "",
                            extra={"rpc": method.__name__, "code": code.name,
                                   "ms": round(seconds * 1000, 3),
                                   "decision_id": decision_id or None})
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper
