"""Certificates made by openssl for tests: a CA, a server certificate for
localhost/127.0.0.1 and a client certificate (TLS and mutual TLS, gRPC and Redis)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Path:
    """``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and ``client.pem``/``client.key``
    in ``directory`` (valid two days); returns it."""
    d = directory
    # the extensions RFC 5280 asks for (Python 3.13 verifies with VERIFY_X509_STRICT and
    # refuses a CA without keyUsage)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=Arbiter test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                               "basicConstraints=critical,CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n"
                               "subjectKeyIdentifier=hash\n"
                               "authorityKeyIdentifier=keyid\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
                 "-out", f"{name}.pem", cwd=d)
    return d


def make_two_pkis(directory: Path) -> tuple[Path, Path]:
    """Test certificates (:func:`make_pki`) in ``directory/pki``, and another CA's in
    ``directory/other`` (which did not sign the first's: a client trusting it must
    refuse the servers)."""
    made = []
    for name in ("pki", "other"):
        (directory / name).mkdir()
        made.append(make_pki(directory / name))
    return made[0], made[1]


def connected_port(client: Any) -> int:
    """The port a redis-py client's pool connects to now."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return int(connection.port)
    finally:
        pool.release(connection)


def served_over_tls(url: str, ruleset: Any, pki: Path, other: Path) -> Any:
    """A server on the Redis store at the TLS ``url`` (trusting ``pki``'s CA): a
    TrackEvent, a Decide (not degraded) and its feedback answered; then the same URL
    trusting ``other``'s CA, which did not sign the servers, is unavailable (never
    plain text). Returns the first store."""
    import grpc
    import pytest

    from adapters.redis_store import RedisStore
    from engine.grpc import server
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
    from engine.ports import StoreUnavailable
    from engine.service import Arbiter

    store = RedisStore(url)
    running = server.start(Arbiter(ruleset, store, seed=1), "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            stub.TrackEvent(pb.TrackEventRequest(user_id="ann", event_type="visit"),
                            timeout=5)
            d = stub.Decide(pb.DecideRequest(user_id="ann", placement="homepage_banner",
                                             channel="web"), timeout=5)
            assert not d.degraded
            stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                             action_id=d.actions[0].action_id,
                                             outcome=pb.OUTCOME_CLICK), timeout=5)
    finally:
        running.stop(grace=0.5)
    assert store.get_profile("ann") is not None
    wrong = url.replace(str(pki / "ca.pem"), str(other / "ca.pem"))
    with pytest.raises(StoreUnavailable):
        RedisStore(wrong, cache_ttl=0).get_profile("ann")
    return store
