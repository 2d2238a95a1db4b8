"""Request bytes that are not the message they claim to be.

gRPC's own answer to an undecodable request is ``UNKNOWN`` with a full traceback in
the log for every one: a stream of garbage becomes a flood on the operator's disk.
Here each service's deserializers are wrapped so that a message that does not decode
becomes an :class:`Undecodable` marker; the servicer's ``rpc`` wrapper answers it
``INVALID_ARGUMENT`` ("request: ..."), counts it (``arbiter_undecodable_requests``)
and logs at most one line per method every ten seconds, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class Undecodable:
    """Stands in for a request whose bytes did not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize``, returning :class:`Undecodable` instead of raising DecodeError."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as err:
            return Undecodable(str(err))

    return parse


class _TolerantRegistration:
    """What a generated ``add_*Servicer_to_server`` needs of a server, wrapping each
    method's deserializer before passing the handlers on."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers come again, by name, in the next call."""

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, Any]) -> None:
        # the handlers are grpc's RpcMethodHandler namedtuples (the stubs type them as
        # the abstract class, without _replace)
        wrapped = {name: h._replace(request_deserializer=tolerant(h.request_deserializer))
                   for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),))
        register: Any = self.server.add_registered_method_handlers  # type: ignore[attr-defined]
        register(service, wrapped)


def add_tolerant(add_to_server: Callable[[Any, Any], None], servicer: Any,
                 server: grpc.aio.Server) -> None:
    """``add_XServicer_to_server(servicer, server)`` with tolerant deserializers."""
    add_to_server(servicer, _TolerantRegistration(server))
