"""Transport security and bearer tokens with scopes.

TLS (``--tls-cert``, ``--tls-key``) and mutual TLS (``--tls-client-ca``: clients must
present a certificate that CA signed) use gRPC's own credentials. Tokens: a TOML file
(``--tokens-file``) or ``ARBITER_TOKENS`` (``token=scope,scope;token=scope``) maps each
token to its scopes; a call without ``authorization: Bearer <token>`` is
``UNAUTHENTICATED``, one whose token lacks the method's scope ``PERMISSION_DENIED``.
The health service and reflection stay open (probes and generic tools).

>>> tokens = parse_tokens("svc=decide,feedback;ops=admin")
>>> sorted(tokens["svc"]), sorted(tokens["ops"])
(['decide', 'feedback'], ['admin'])
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

SCOPES = {
    "/arbiter.v1.DecisionService/Decide": "decide",
    "/arbiter.v1.DecisionService/DecideBatch": "decide",
    "/arbiter.v1.DecisionService/Feedback": "feedback",
    "/arbiter.v1.DecisionService/TrackEvent": "track",
    "/arbiter.v1.DecisionService/TrackEventBatch": "track",
    "/arbiter.v1.DecisionService/GetProfile": "profiles",
    "/arbiter.v1.DecisionService/ForgetProfile": "profiles",
    "/arbiter.v1.AdminService/": "admin",
    "/arbiter.v1.CatalogueService/": "admin",
    "/arbiter.v1.ReportService/": "reports",
}
"""The scope each method needs (a key ending in / covers the whole service)."""
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Tokens = Mapping[str, frozenset[str]]


def parse_tokens(text: str) -> dict[str, frozenset[str]]:
    """``token=scope,scope;token=scope`` (the ``ARBITER_TOKENS`` form)."""
    out: dict[str, frozenset[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        token, _, scopes = item.partition("=")
        out[token.strip()] = _scopes(frozenset(s.strip() for s in scopes.split(",")
                                               if s.strip()), "ARBITER_TOKENS")
    if "" in out or not out:
        raise ValueError("ARBITER_TOKENS: expected token=scope,scope;token=scope")
    return out


def _scopes(scopes: frozenset[str], where: str) -> frozenset[str]:
    unknown = scopes - set(SCOPES.values())
    if unknown:
        raise ValueError(f"{where}: unknown scope(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(set(SCOPES.values())))})")
    return scopes


def load_tokens(path: str | Path) -> dict[str, frozenset[str]]:
    """A TOML file: ``[tokens]`` then ``"TOKEN" = ["decide", "feedback"]``; ValueError
    saying what is wrong with it."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"tokens file {path}: {err}") from None
    tokens = data.get("tokens")
    if not isinstance(tokens, dict) or not tokens:
        raise ValueError(f"tokens file {path}: needs a [tokens] table of TOKEN = [scopes]")
    out: dict[str, frozenset[str]] = {}
    for token, scopes in tokens.items():
        if not token or not isinstance(scopes, list) or not all(
                isinstance(s, str) for s in scopes):
            raise ValueError(f"tokens file {path}: {token!r} must be a list of scope names")
        out[token] = _scopes(frozenset(scopes), f"tokens file {path}")
    return out


def scope_of(method: str) -> str | None:
    """The scope a method needs; None for the open services."""
    if method.startswith(OPEN_PREFIXES):
        return None
    if method in SCOPES:
        return SCOPES[method]
    service = method[: method.rfind("/") + 1]
    return SCOPES.get(service, "admin")  # anything unlisted: operators only


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call against the method's scope."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = dict(tokens)

    def _scopes(self, metadata: Any) -> frozenset[str] | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    return None
                for known, scopes in self.tokens.items():  # constant-time per token
                    if hmac.compare_digest(known.encode(), token.strip().encode()):
                        return scopes
        return None

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        needed = scope_of(handler_call_details.method)
        if needed is None:
            return await continuation(handler_call_details)
        scopes = self._scopes(handler_call_details.invocation_metadata)
        if scopes is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED,
                         "authorization: a bearer token is required")
        if needed not in scopes:
            return _deny(grpc.StatusCode.PERMISSION_DENIED,
                         f"authorization: the token lacks the '{needed}' scope")
        return await continuation(handler_call_details)


def server_credentials(cert: str | Path, key: str | Path,
                       client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate and key; with ``client_ca``, clients must present a
    certificate it signed (mutual TLS)."""
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=Path(client_ca).read_bytes(),
                                       require_client_auth=True)
