"""How the CLI's client commands (``decide --target``, ``report --target``) reach a server:
plaintext, TLS (``--tls-ca``), mutual TLS (``--tls-cert``/``--tls-key``), and a bearer
token (``--token`` or ``$ARBITER_TOKEN``) sent with every call."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", metavar="PEM",
                        help="connect with TLS, trusting this CA (the server's issuer)")
    parser.add_argument("--tls-cert", metavar="PEM",
                        help="with --tls-ca: this client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="the client certificate's key")
    parser.add_argument("--token", default=os.environ.get("ARBITER_TOKEN"),
                        help="bearer token for a server started with tokens "
                             "(default: $ARBITER_TOKEN)")


def open_channel(args: argparse.Namespace) -> Any:
    """A gRPC channel to ``args.target`` with the transport and token the flags ask for."""
    import grpc

    tls_ca = getattr(args, "tls_ca", None)
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if bool(cert) != bool(key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if cert and not tls_ca:
        raise SystemExit("--tls-cert needs --tls-ca")
    if tls_ca:
        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None)
        except OSError as err:
            raise SystemExit(f"cannot read a TLS file: {err}") from None
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    token = getattr(args, "token", None)
    if token:
        channel = grpc.intercept_channel(channel, _bearer_token(token))
    return channel


def _bearer_token(token: str) -> Any:
    """A client interceptor adding ``authorization: Bearer TOKEN`` to every unary call."""
    import collections

    import grpc

    class Details(collections.namedtuple(
            "Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                        "compression")), grpc.ClientCallDetails):
        pass

    class BearerToken(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any],
                                  details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
            return continuation(Details(details.method, details.timeout, metadata,
                                        details.credentials, details.wait_for_ready,
                                        details.compression), request)

    return BearerToken()
