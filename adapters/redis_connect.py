"""Redis clients from a URL: a standalone server, a primary found through Sentinel, or
the primary of one hash slot of a Redis Cluster.

``redis://`` and ``rediss://`` URLs are redis-py's own (``Redis.from_url``). redis-py
finds and follows a Sentinel-monitored primary (``redis.sentinel``) but has no URL for
it; this module reads the form other Redis clients use::

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]

(Sentinel members default to port 26379; the credentials are the data nodes'; over
TLS, ``rediss+sentinel://...?ssl_ca_certs=PATH``, to the Sentinels and the data nodes
alike, with ``ssl_certfile``/``ssl_keyfile`` for mutual TLS). Its
clients connect to whichever server Sentinel names as the primary; after a failover, a
connection to the old primary fails once (redis-py turns its READONLY reply into a
ConnectionError, which the store answers as StoreUnavailable: degraded decisions,
UNAVAILABLE writes) and the next connects to the new one.

A Redis Cluster, whose nodes redis-py knows but whose multi-key scripts and pipelines
its Cluster client does not run (scripts in a cluster pipeline are refused), is reached
the same way: Arbiter keeps every key of a namespace under one hash tag, so one primary
holds them all, and its clients connect to whichever primary serves that slot::

    redis+cluster://[user:password@]host[:port][,host[:port]...][/0]
    rediss+cluster://...[?ssl_ca_certs=PATH][&ssl_certfile=PATH&ssl_keyfile=PATH]

(nodes default to port 6379; any reachable node answers which primary serves the slot,
and over TLS names the TLS ports; the CA defaults to the system's). After a failover or
when the slot moves, a connection to the old node fails once (``MOVED``, ``READONLY``,
``CLUSTERDOWN``, ``TRYAGAIN`` become a ConnectionError: StoreUnavailable to the store)
and the next connects to the new one.

>>> found = parse_sentinel_url("redis+sentinel://ann:s3cret@s1,s2:26380/shop/2")
>>> found.hosts, found.service, found.db, found.username
((('s1', 26379), ('s2', 26380)), 'shop', 2, 'ann')
>>> parse_sentinel_url("redis://localhost:6379/0") is None
True
>>> parse_cluster_url("redis+cluster://n1,n2:7001").hosts
(('n1', 6379), ('n2', 7001))
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.backoff
import redis.connection
import redis.retry
import redis.sentinel
from redis.crc import key_slot

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_PORT = 6379


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, read."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: tuple[tuple[str, str], ...] | None = None  # TLS_OPTIONS given; None: plain

    def tls_options(self) -> dict[str, Any]:
        """TLS to the Sentinels and the data nodes (``rediss+sentinel://``), or none."""
        return {} if self.tls is None else {"ssl": True, **dict(self.tls)}


class _Parsed(NamedTuple):
    path: str
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: tuple[tuple[str, str], ...] | None  # TLS options (rediss+...), None: plain


TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
"""What a ``rediss+cluster://`` URL may set (``?ssl_ca_certs=PATH&...``): the CA to
trust (default: the system's), and the client's certificate and key for mutual TLS."""


def _parse_hosts(url: str, scheme: str, port: int, what: str, tls: bool = False
                 ) -> _Parsed | None:
    """A ``scheme://[user:password@]host[:port][,...][/path]`` URL's parts, hosts with
    ``port`` by default; ``rediss+...`` too (with :data:`TLS_OPTIONS`) when ``tls``;
    None for another scheme; ValueError when malformed."""
    given, _, rest = url.partition("://")
    secure = given.lower() == scheme.replace("redis+", "rediss+")
    if secure and not tls:
        raise ValueError(f"{url}: TLS to a Redis {what} is not supported yet")
    if given.lower() != scheme and not secure:
        return None
    parts = urlsplit(f"redis://{rest}")  # for the userinfo, path and query only
    options = parse_qsl(parts.query, keep_blank_values=True)
    if parts.fragment or (options and not secure):
        raise ValueError(f"{url}: a {what} URL takes no options (?...) here")
    unknown = sorted({k for k, _ in options} - set(TLS_OPTIONS))
    if unknown:
        raise ValueError(f"{url}: unknown option {unknown[0]!r} (TLS: "
                         f"{', '.join(TLS_OPTIONS)})")
    userinfo, _, members = parts.netloc.rpartition("@")
    hosts = tuple(_member(url, member, port, what) for member in members.split(","))
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return _Parsed(parts.path, hosts, unquote(username) or None, unquote(password) or None,
                   tuple(options) if secure else None)


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The Sentinel URL's parts; None for any other scheme; ValueError when malformed."""
    parsed = _parse_hosts(url, SENTINEL_SCHEME, SENTINEL_PORT, "Sentinel", tls=True)
    if parsed is None:
        return None
    path, hosts, username, password, tls = parsed
    names = [p for p in path.split("/") if p]
    if not names or len(names) > 2:
        raise ValueError(f"{url}: expected /SERVICE or /SERVICE/DB after the Sentinel hosts")
    if len(names) == 2 and not names[1].isdigit():
        raise ValueError(f"{url}: the database must be a number, not {names[1]!r}")
    return SentinelURL(hosts, unquote(names[0]), int(names[1]) if len(names) == 2 else 0,
                       username, password, tls)


def _member(url: str, member: str, default_port: int, what: str) -> tuple[str, int]:
    host, colon, port = member.rpartition(":") if ":" in member else (member, "", "")
    if member.startswith("[") and member.endswith("]"):  # an IPv6 address, no port
        host, colon, port = member, "", ""
    if not host or (colon and not port.isdigit()):
        raise ValueError(f"{url}: {member!r} is not a {what} host[:port]")
    return host.removeprefix("[").removesuffix("]"), int(port) if port else default_port


@dataclass(frozen=True)
class ClusterURL:
    """A ``redis+cluster://`` (or TLS: ``rediss+cluster://``) URL, read."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: tuple[tuple[str, str], ...] | None = None  # TLS_OPTIONS given; None: plain

    def client_options(self) -> dict[str, Any]:
        """What a redis-py client of one node needs: credentials, and TLS."""
        options: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls is not None:
            options.update(self.tls, ssl=True)
        return options


def parse_cluster_url(url: str) -> ClusterURL | None:
    """The Cluster URL's parts; None for any other scheme; ValueError when malformed.

    >>> parse_cluster_url("rediss+cluster://n1:7000?ssl_ca_certs=/etc/ca.pem").tls
    (('ssl_ca_certs', '/etc/ca.pem'),)
    """
    parsed = _parse_hosts(url, CLUSTER_SCHEME, CLUSTER_PORT, "Cluster", tls=True)
    if parsed is None:
        return None
    if parsed.path.strip("/") not in ("", "0"):
        raise ValueError(f"{url}: a Redis Cluster has database 0 only")
    return ClusterURL(parsed.hosts, parsed.username, parsed.password, parsed.tls)


def slot_primary(slots: Any, slot: int, asked: str) -> tuple[str, int] | None:
    """The primary serving ``slot`` in a ``CLUSTER SLOTS`` reply (from the node at host
    ``asked``, which an empty or ``?`` address stands for), or None.

    >>> reply = [[0, 5460, [b"10.0.0.1", 7000, b"id1"]], [5461, 16383, [b"", 7001, b"id2"]]]
    >>> slot_primary(reply, 42, "n1"), slot_primary(reply, 9000, "n1")
    (('10.0.0.1', 7000), ('n1', 7001))
    """
    for start, end, primary, *_ in slots:
        if int(start) <= slot <= int(end):
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            return (host if host not in ("", "?") else asked), int(primary[1])
    return None


_ONCE = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
"""Asking a node which primary serves the slot: once (the next node is asked instead)."""

_MOVED = (redis.exceptions.MovedError, redis.exceptions.AskError,
          redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
          redis.exceptions.ReadOnlyError)
"""Replies that say this node no longer serves the slot (or not yet again)."""


def ask_slot_primary(cluster: ClusterURL, slot: int, nodes: Sequence[tuple[str, int]],
                     **options: Any) -> tuple[tuple[str, int], list[tuple[str, int]]]:
    """The primary that serves ``slot``, asked of ``nodes`` in turn (each once, with
    ``options``: its timeouts), and the nodes that failed to answer before one did;
    ConnectionError when none names it."""
    errors, failed = [], []
    for host, port in nodes:
        node = redis.Redis(host=host, port=port, retry=_ONCE, **cluster.client_options(),
                           **options)
        try:
            found = slot_primary(node.execute_command("CLUSTER SLOTS"), slot, host)
        except (redis.RedisError, OSError) as err:
            errors.append(f"{host}:{port}: {err}")
            failed.append((host, port))
            continue
        finally:
            node.close()
        if found is not None:
            return found, failed
        errors.append(f"{host}:{port}: no primary serves slot {slot}")
    raise redis.ConnectionError(f"no Cluster node named the primary of slot {slot} "
                                f"({'; '.join(errors)})")


class _SlotPoolMixin:
    """What a pool of connections to the primary of one slot knows (sync and asyncio)."""

    cluster: ClusterURL
    slot: int
    ask_options: dict[str, Any]
    ask_order: list[tuple[str, int]]  # a node that failed to answer is asked last

    def _slot_options(self, cluster: ClusterURL, slot: int, connection_class: type,
                      options: dict[str, Any]) -> dict[str, Any]:
        self.cluster, self.slot = cluster, slot
        self.ask_order = list(cluster.hosts)
        self.ask_options = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")
                            if k in options}
        return dict(options, **dict(cluster.tls or ()), connection_class=connection_class,
                    username=cluster.username, password=cluster.password)

    def ask_primary(self) -> tuple[str, int]:
        """The slot's primary now (:func:`ask_slot_primary`); nodes that did not answer
        go to the end of the order, so a dead node's timeout is not paid each time."""
        order = list(self.ask_order)
        primary, failed = ask_slot_primary(self.cluster, self.slot, order, **self.ask_options)
        if failed:
            self.ask_order = [n for n in order if n not in failed] + failed
        return primary

    def make_connection(self) -> Any:
        connection: Any = super().make_connection()  # type: ignore[misc]
        connection.slot_pool = self
        return connection


class _SlotPool(_SlotPoolMixin, redis.ConnectionPool):
    """Connections to the primary that serves one hash slot of a Cluster, asked of the
    cluster's nodes whenever a connection connects."""

    def __init__(self, cluster: ClusterURL, slot: int, **options: Any) -> None:
        connection = _SlotSSLConnection if cluster.tls is not None else _SlotConnection
        super().__init__(**self._slot_options(cluster, slot, connection, options))

    def primary(self) -> tuple[str, int]:
        return self.ask_primary()


class _SlotConnection(redis.connection.Connection):
    slot_pool: _SlotPool

    def _connect(self) -> Any:
        self.host, self.port = self.slot_pool.primary()
        return super()._connect()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except _MOVED as err:
            self.disconnect()
            raise redis.ConnectionError(f"the Cluster's slot {self.slot_pool.slot} is not "
                                        f"served here now ({err})") from err


class _SlotSSLConnection(_SlotConnection, redis.connection.SSLConnection):
    """:class:`_SlotConnection` over TLS (``rediss+cluster://``)."""


class _AsyncSlotPool(_SlotPoolMixin, redis.asyncio.ConnectionPool):
    """:class:`_SlotPool` for asyncio clients (the primary asked on a thread: a new
    connection is rare, and the loop must not wait for a node's timeout)."""

    def __init__(self, cluster: ClusterURL, slot: int, **options: Any) -> None:
        connection = (_AsyncSlotSSLConnection if cluster.tls is not None
                      else _AsyncSlotConnection)
        super().__init__(**self._slot_options(cluster, slot, connection, options))

    async def primary(self) -> tuple[str, int]:
        return await asyncio.to_thread(self.ask_primary)


class _AsyncSlotConnection(redis.asyncio.connection.Connection):
    slot_pool: _AsyncSlotPool

    async def _connect(self) -> None:
        self.host, self.port = await self.slot_pool.primary()
        await super()._connect()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except _MOVED as err:
            await self.disconnect()
            raise redis.ConnectionError(f"the Cluster's slot {self.slot_pool.slot} is not "
                                        f"served here now ({err})") from err


class _AsyncSlotSSLConnection(_AsyncSlotConnection, redis.asyncio.connection.SSLConnection):
    """:class:`_AsyncSlotConnection` over TLS (``rediss+cluster://``)."""


def _data_node_options(sentinel: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    return dict(options, db=sentinel.db, username=sentinel.username,
                password=sentinel.password, **sentinel.tls_options())


def _sentinel_options(sentinel: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    """How to reach a Sentinel: the data nodes' timeouts, and TLS as they."""
    return {**{k: options[k] for k in ("socket_timeout", "socket_connect_timeout")
               if k in options}, **sentinel.tls_options()}


def sync_client(url: str, slot_key: str = "", **options: Any) -> redis.Redis:
    """A synchronous client (redis-py's ``Redis``) for a standalone, Sentinel or Cluster
    URL (on a Cluster: to the primary serving the slot of ``slot_key``)."""
    cluster = parse_cluster_url(url)
    if cluster is not None:
        return redis.Redis(connection_pool=_SlotPool(cluster, key_slot(slot_key.encode()),
                                                     **options))
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    return redis.sentinel.Sentinel(
        sentinel.hosts, sentinel_kwargs=_sentinel_options(sentinel, options),
    ).master_for(sentinel.service, **_data_node_options(sentinel, options))


def async_client(url: str, slot_key: str = "", **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (redis-py's ``redis.asyncio.Redis``) for the same URLs."""
    cluster = parse_cluster_url(url)
    if cluster is not None:
        return redis.asyncio.Redis(connection_pool=_AsyncSlotPool(
            cluster, key_slot(slot_key.encode()), **options))
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.asyncio.sentinel.Sentinel(
        sentinel.hosts, sentinel_kwargs=_sentinel_options(sentinel, options),
    ).master_for(sentinel.service, **_data_node_options(sentinel, options))
