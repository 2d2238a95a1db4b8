"""Transport security and bearer tokens with scopes.

TLS (``--tls-cert``, ``--tls-key``) and mutual TLS (``--tls-client-ca``: clients must
present a certificate that CA signed) use gRPC's own credentials. Tokens: a TOML file
(``--tokens-file``) or ``ARBITER_TOKENS`` (``token=scope,scope;token=scope``) maps each
token to its scopes; a call without ``authorization: Bearer <token>`` is
``UNAUTHENTICATED``, one whose token lacks the method's scope ``PERMISSION_DENIED``.
The health service and reflection stay open (probes and generic tools).

Both files are read again when they change, without a restart: the certificate, key and
client CA at the next connection after a change (cert-manager's renewals), the tokens
within a second (a leaked token revoked). A change that does not load (a key that does
not match its certificate, a file half written, a broken tokens file) is logged and the
files as last loaded stay in force.

>>> tokens = parse_tokens("svc=decide,feedback;ops=admin")
>>> sorted(tokens["svc"]), sorted(tokens["ops"])
(['decide', 'feedback'], ['admin'])
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, ItemsView, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

TOKENS_CHECK_SECONDS = 1.0
"""How often a tokens file is looked at for a change, at most."""

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


def _stamp(*paths: str | Path | None) -> tuple[tuple[int, int] | None, ...]:
    """What changes when any of the files is replaced or rewritten (``None``: missing)."""
    stamps: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path) if path is not None else None
        except OSError:
            info = None
        stamps.append(None if info is None else (info.st_mtime_ns, info.st_size))
    return tuple(stamps)


class TokensFile(Mapping[str, frozenset[str]]):
    """The tokens of a ``--tokens-file``, read again when the file changes (looked at
    once a second at most); a change that does not load leaves the tokens as they were
    (logged)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tokens = load_tokens(self.path)  # (a bad file at start: ValueError)
        self._stamp = _stamp(self.path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _current(self) -> dict[str, frozenset[str]]:
        now = time.monotonic()
        if now - self._checked >= TOKENS_CHECK_SECONDS:
            with self._lock:
                self._checked = now
                stamp = _stamp(self.path)
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._tokens = load_tokens(self.path)
                        log.info("tokens file %s read again: %d token(s)", self.path,
                                 len(self._tokens))
                    except ValueError as err:
                        log.error("%s; the tokens as last read stay in force", err)
        return self._tokens

    def __getitem__(self, token: str) -> frozenset[str]:
        return self._current()[token]

    def items(self) -> ItemsView[str, frozenset[str]]:
        """The tokens of one reading of the file (the mixin's view would look each token
        up again, and a reload between two lookups would miss a revoked one: KeyError)."""
        return self._current().items()

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


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
        self.tokens = tokens  # (a TokensFile changes: read as it is at each call)

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
    certificate it signed (mutual TLS). The files are read again, at the next
    connection, whenever one of them changes (:class:`CertificateFiles`)."""
    files = CertificateFiles(cert, key, client_ca)
    # (the fetcher may answer None, "no change", as grpc's docs say and its stubs do not)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration, files.fetch,  # type: ignore[arg-type]
        require_client_authentication=client_ca is not None)


class CertificateFiles:
    """The server's certificate, key and client CA as last loaded; :meth:`fetch` (gRPC
    calls it at each new connection) gives a new configuration once they change and
    load, so a renewed certificate is served without a restart."""

    def __init__(self, cert: str | Path, key: str | Path, client_ca: str | Path | None
                 ) -> None:
        self.paths = (cert, key, client_ca)
        self.stamp = _stamp(*self.paths)
        self.configuration = self._load()  # (unreadable at start: OSError, ValueError)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, client_ca = self.paths
        try:  # (refuses a key that is not the certificate's, or a file that is no PEM)
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except ssl.SSLError as err:
            raise ValueError(f"TLS: {cert} and {key} are not a certificate and its key "
                             f"({err.reason or err})") from None
        if client_ca is not None:
            try:
                ssl.create_default_context(cafile=client_ca)
            except ssl.SSLError as err:
                raise ValueError(f"TLS: {client_ca} holds no CA certificate "
                                 f"({err.reason or err})") from None
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        return grpc.ssl_server_certificate_configuration(
            [pair], root_certificates=Path(client_ca).read_bytes() if client_ca else None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed and load; None: keep serving the
        current one (a change that does not load is logged once)."""
        stamp = _stamp(*self.paths)
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            self.configuration = self._load()
        except (OSError, ValueError) as err:
            log.error("TLS files changed but do not load (%s); serving the certificate "
                      "as last loaded", err)
            return None
        log.info("TLS certificate %s read again", self.paths[0])
        return self.configuration
