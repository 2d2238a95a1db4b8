"""Redis URLs beyond redis-py's own: ``redis+sentinel://`` and ``redis+cluster://``, and
their TLS forms (``rediss+...?ssl_ca_certs=...``): read, or refused naming what is
wrong before any client exists."""

from __future__ import annotations

import re

import pytest

from adapters.redis_connect import parse_cluster_url, parse_sentinel_url
from adapters.redis_store import RedisStore


@pytest.mark.parametrize(("url", "error"), [
    ("redis+sentinel://h", "expected /SERVICE or /SERVICE/DB"),
    ("redis+sentinel://h/", "expected /SERVICE or /SERVICE/DB"),
    ("redis+sentinel://h/s/0/x", "expected /SERVICE or /SERVICE/DB"),
    ("redis+sentinel://h/s/x", "the database must be a number"),
    ("redis+sentinel://h:port/s", "is not a Sentinel host[:port]"),
    ("redis+sentinel://,h/s", "is not a Sentinel host[:port]"),
    ("redis+sentinel://h/s?ssl=1", "takes no options"),
    ("rediss+sentinel://h/s?ssl_verify=no", "unknown option 'ssl_verify'"),
    ("redis+cluster://h/1", "a Redis Cluster has database 0 only"),
    ("redis+cluster://h:port", "is not a Cluster host[:port]"),
    ("redis+cluster://h,,k", "is not a Cluster host[:port]"),
    ("redis+cluster://h?ssl=1", "takes no options"),
    ("rediss+cluster://h?ssl_verify=no", "unknown option 'ssl_verify'"),
])
def test_a_malformed_url_is_refused_naming_what_is_wrong(url: str, error: str) -> None:
    parse = parse_cluster_url if "cluster" in url else parse_sentinel_url
    with pytest.raises(ValueError, match=re.escape(error)):
        parse(url)
    with pytest.raises(ValueError, match=re.escape(error)):  # before any client exists
        RedisStore(url)


def test_a_sentinel_url_reads_hosts_ports_ipv6_credentials_and_database() -> None:
    found = parse_sentinel_url("REDIS+SENTINEL://u:p%40ss@h1,h2:26380,[::1]:7/my%20svc/3")
    assert found is not None
    assert found.hosts == (("h1", 26379), ("h2", 26380), ("::1", 7))
    assert (found.service, found.db, found.username, found.password) == (
        "my svc", 3, "u", "p@ss")
    assert found.tls is None


def test_a_cluster_url_reads_nodes_ports_and_credentials() -> None:
    found = parse_cluster_url("REDIS+CLUSTER://u:p%40ss@n1,n2:7001,[::1]:7002/0")
    assert found is not None
    assert found.hosts == (("n1", 6379), ("n2", 7001), ("::1", 7002))
    assert (found.username, found.password, found.tls) == ("u", "p@ss", None)


def test_tls_urls_carry_the_ca_and_the_client_certificate() -> None:
    cluster = parse_cluster_url("rediss+cluster://n1?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
                                "&ssl_keyfile=/c.key")
    assert cluster is not None and cluster.client_options() == {
        "username": None, "password": None, "ssl": True, "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem", "ssl_keyfile": "/c.key"}
    sentinel = parse_sentinel_url("rediss+sentinel://s1/shop")
    assert sentinel is not None and sentinel.tls_options() == {"ssl": True}
