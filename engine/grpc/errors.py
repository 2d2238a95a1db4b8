"""One mapping from engine errors to gRPC status codes, for every servicer.

Known conditions get their own code and a message naming the field; anything
else is logged with its traceback and answered ``INTERNAL``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from engine.feedback import ActionNotInDecision
from engine.ports import DecisionNotFound, StoreUnavailable
from engine.requests import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

R = TypeVar("R")


def rpc(method: Callable[[Any, Any, grpc.ServicerContext], R]) -> Callable[..., R]:
    """Map engine errors to gRPC status codes; log anything unexpected."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except InvalidArgument as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except NotFound as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except FailedPrecondition as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except DecisionNotFound as err:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"decision_id: no decision {err.args[0]!r} in the attribution window")
        except ActionNotInDecision as err:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"action_id: {err.args[0]!r} was not part of this decision")
        except StoreUnavailable as err:
            log.warning("%s: %s", method.__name__, err)
            context.abort(grpc.StatusCode.UNAVAILABLE, "profile store unavailable; retry")
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper
