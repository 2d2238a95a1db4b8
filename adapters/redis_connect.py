"""Redis clients from a URL: a standalone server, or a primary found through Sentinel.

``redis://`` and ``rediss://`` URLs are redis-py's own (``Redis.from_url``). redis-py
finds and follows a Sentinel-monitored primary (``redis.sentinel``) but has no URL for
it; this module reads the form other Redis clients use::

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]

(Sentinel members default to port 26379; the credentials are the data nodes'; TLS
through Sentinel is not offered yet: a URL has no place for the CA to trust). Its
clients connect to whichever server Sentinel names as the primary; after a failover, a
connection to the old primary fails once (redis-py turns its READONLY reply into a
ConnectionError, which the store answers as StoreUnavailable: degraded decisions,
UNAVAILABLE writes) and the next connects to the new one.

>>> found = parse_sentinel_url("redis+sentinel://ann:s3cret@s1,s2:26380/shop/2")
>>> found.hosts, found.service, found.db, found.username
((('s1', 26379), ('s2', 26380)), 'shop', 2, 'ann')
>>> parse_sentinel_url("redis://localhost:6379/0") is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, read."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The Sentinel URL's parts; None for any other scheme; ValueError when malformed."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "rediss+sentinel":
        raise ValueError(f"{url}: TLS through Sentinel is not supported yet")
    if scheme.lower() != SENTINEL_SCHEME:
        return None
    parts = urlsplit(f"redis://{rest}")  # for the userinfo, path and query only
    if parts.query or parts.fragment:
        raise ValueError(f"{url}: a Sentinel URL takes no options (?...) here")
    userinfo, _, members = parts.netloc.rpartition("@")
    hosts = tuple(_member(url, member) for member in members.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"{url}: expected /SERVICE or /SERVICE/DB after the Sentinel hosts")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"{url}: the database must be a number, not {path[1]!r}")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return SentinelURL(hosts, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                       unquote(username) or None, unquote(password) or None)


def _member(url: str, member: str) -> tuple[str, int]:
    host, colon, port = member.rpartition(":") if ":" in member else (member, "", "")
    if member.startswith("[") and member.endswith("]"):  # an IPv6 address, no port
        host, colon, port = member, "", ""
    if not host or (colon and not port.isdigit()):
        raise ValueError(f"{url}: {member!r} is not a Sentinel host[:port]")
    return host.removeprefix("[").removesuffix("]"), int(port) if port else SENTINEL_PORT


def _data_node_options(sentinel: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    return dict(options, db=sentinel.db, username=sentinel.username,
                password=sentinel.password)


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """How long to wait for a Sentinel: the data nodes' timeouts."""
    return {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")
            if k in options}


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A synchronous client (redis-py's ``Redis``) for a standalone or Sentinel URL."""
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    return redis.sentinel.Sentinel(
        sentinel.hosts, sentinel_kwargs=_sentinel_options(options),
    ).master_for(sentinel.service, **_data_node_options(sentinel, options))


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (redis-py's ``redis.asyncio.Redis``) for the same URLs."""
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.asyncio.sentinel.Sentinel(
        sentinel.hosts, sentinel_kwargs=_sentinel_options(options),
    ).master_for(sentinel.service, **_data_node_options(sentinel, options))
