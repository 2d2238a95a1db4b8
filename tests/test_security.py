"""TLS, mutual TLS and bearer tokens, with certificates made by openssl in the test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.security import parse_tokens, server_credentials
from engine.service import Arbiter
from tests.pki import make_pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
REQUEST = pb.DecideRequest(user_id="u", placement="homepage_banner", channel="web")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(retail: Ruleset, **kwargs: object) -> server.RunningServer:
    return server.start(Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0, workers=2,
                        **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def tls(retail: Ruleset, pki: Path) -> Iterator[server.RunningServer]:
    running = _serve(retail, credentials=server_credentials(pki / "server.pem",
                                                            pki / "server.key"))
    yield running
    running.stop(grace=0.2)


def test_tls_serves_clients_that_trust_the_ca(tls: server.RunningServer, pki: Path) -> None:
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{tls.port}", creds) as channel:
        assert pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=10).decision_id
    with grpc.insecure_channel(f"127.0.0.1:{tls.port}") as plain, \
            pytest.raises(grpc.RpcError) as err:
        pb_grpc.DecisionServiceStub(plain).Decide(REQUEST, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_mutual_tls_needs_a_client_certificate(retail: Ruleset, pki: Path) -> None:
    running = _serve(retail, credentials=server_credentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem"))
    ca = (pki / "ca.pem").read_bytes()
    try:
        anonymous = grpc.ssl_channel_credentials(ca)
        with grpc.secure_channel(f"localhost:{running.port}", anonymous) as channel, \
                pytest.raises(grpc.RpcError):
            pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=5)
        known = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(),
                                             (pki / "client.pem").read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", known) as channel:
            assert pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=10).decision_id
    finally:
        running.stop(grace=0.2)


def test_tokens_carry_scopes(retail: Ruleset) -> None:
    running = _serve(retail, tokens=parse_tokens("svc-token=decide,feedback;ops-token=admin"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            decide = pb_grpc.DecisionServiceStub(channel).Decide
            admin = apb_grpc.AdminServiceStub(channel).GetRuleset

            def code(call: object, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
                try:
                    call(REQUEST if call is decide else apb.GetRulesetRequest(),  # type: ignore[operator]
                         metadata=metadata, timeout=10)
                except grpc.RpcError as err:
                    return err.code()  # type: ignore[attr-defined, no-any-return]
                return grpc.StatusCode.OK

            service = (("authorization", "Bearer svc-token"),)
            ops = (("authorization", "Bearer ops-token"),)
            assert code(decide, ()) == grpc.StatusCode.UNAUTHENTICATED
            assert code(decide, (("authorization", "Bearer wrong"),)) == (
                grpc.StatusCode.UNAUTHENTICATED)
            assert code(decide, service) == grpc.StatusCode.OK
            assert code(admin, service) == grpc.StatusCode.PERMISSION_DENIED
            assert code(admin, ops) == grpc.StatusCode.OK
            assert code(decide, ops) == grpc.StatusCode.PERMISSION_DENIED
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes stay open
    finally:
        running.stop(grace=0.2)


def test_the_cli_client_speaks_mutual_tls_with_a_token(
        retail: Ruleset, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.app import main

    running = _serve(retail, credentials=server_credentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem"),
        tokens=parse_tokens("svc-token=decide;ops-token=reports"))
    tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"),
           "--tls-key", str(pki / "client.key")]
    target = ["--target", f"localhost:{running.port}"]
    try:
        assert main(["decide", *target, *tls, "--token", "svc-token", "--user", "u",
                     "--placement", "homepage_banner", "--channel", "web"]) == 0
        assert "1. " in capsys.readouterr().out
        assert main(["report", "hero_test", *target, *tls, "--token", "ops-token"]) == 0
        assert "hero_test" in capsys.readouterr().out
        with pytest.raises(SystemExit) as refused:  # the wrong scope: a clear refusal
            main(["decide", *target, *tls, "--token", "ops-token", "--user", "u",
                  "--placement", "homepage_banner", "--channel", "web"])
        assert "PERMISSION_DENIED" in str(refused.value)
    finally:
        running.stop(grace=0.2)


def test_a_renewed_certificate_is_served_without_a_restart(retail: Ruleset,
                                                            tmp_path: Path) -> None:
    """cert-manager renews the certificate (here: from another CA) in the files the
    server was started with: new connections get it at once; a renewal that does not load
    (the key of another certificate) leaves the last good one served. Before, the files
    were read once: a restart was the only way."""
    from tests.pki import make_two_pkis

    first, second = make_two_pkis(tmp_path)
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key", "ca.pem"):
        shutil.copy(first / name, live / name)
    running = _serve(retail, credentials=server_credentials(
        live / "server.pem", live / "server.key", live / "ca.pem"))

    def decides(pki: Path) -> bool:  # a new connection of a client of that CA
        creds = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(),
            (pki / "client.pem").read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", creds) as channel:
            try:
                return bool(pb_grpc.DecisionServiceStub(channel).Decide(REQUEST, timeout=5)
                            .decision_id)
            except grpc.RpcError:
                return False

    try:
        assert decides(first) and not decides(second)
        shutil.copy(second / "server.pem", live / "server.pem")  # half renewed: the new
        assert decides(first) and not decides(second)  # certificate, the old key
        shutil.copy(second / "server.key", live / "server.key")
        shutil.copy(second / "ca.pem", live / "ca.pem")
        assert decides(second) and not decides(first)
    finally:
        running.stop(grace=0.2)


def test_a_changed_tokens_file_applies_within_a_second(retail: Ruleset, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A leaked token is revoked by editing the file: before, only a restart did it."""
    import time

    from engine.grpc import security

    monkeypatch.setattr(security, "TOKENS_CHECK_SECONDS", 0.05)
    path = tmp_path / "tokens.toml"
    path.write_text('[tokens]\n"old-token" = ["decide"]\n')
    running = _serve(retail, tokens=security.TokensFile(path))

    def code(token: str) -> grpc.StatusCode:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            try:
                pb_grpc.DecisionServiceStub(channel).Decide(
                    REQUEST, timeout=5, metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as err:
                return err.code()  # type: ignore[attr-defined, no-any-return]
            return grpc.StatusCode.OK

    try:
        assert code("old-token") == grpc.StatusCode.OK
        path.write_text('[tokens]\n"new-token" = ["decide"]\n')
        time.sleep(0.1)
        assert code("old-token") == grpc.StatusCode.UNAUTHENTICATED
        assert code("new-token") == grpc.StatusCode.OK
        path.write_text('[tokens]\n"broken" = "decide"\n')  # does not load: kept as was
        time.sleep(0.1)
        assert code("new-token") == grpc.StatusCode.OK
    finally:
        running.stop(grace=0.2)


def test_a_tokens_file_read_again_mid_check_gives_one_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interceptor walks the tokens with ``items()``: the Mapping mixin's view looked
    each token up again, so a reload between two lookups (a revoked token) raised KeyError
    inside the check of a call."""
    from engine.grpc import security

    monkeypatch.setattr(security, "TOKENS_CHECK_SECONDS", 0.0)
    path = tmp_path / "tokens.toml"
    path.write_text('[tokens]\n"a" = ["decide"]\n"b" = ["feedback"]\n')
    tokens = security.TokensFile(path)
    walk = iter(tokens.items())
    first = next(walk)
    path.write_text('[tokens]\n"c" = ["track", "decide"]\n')  # "a" and "b" revoked
    assert [first, *walk] == [("a", frozenset({"decide"})), ("b", frozenset({"feedback"}))]
    assert dict(tokens.items()) == {"c": frozenset({"track", "decide"})}  # the next call's


def test_operators_read_and_forget_profiles_from_the_cli(
        retail: Ruleset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`arbiter profile get USER` and `arbiter profile forget USER... --file IDS` with the
    operators' `profiles` scope: an erasure request handled without writing a gRPC
    client."""
    import json

    from engine.cli.app import main

    running = _serve(retail, tokens=parse_tokens("svc-token=decide,track;ops-token=profiles"))
    target = ["--target", f"127.0.0.1:{running.port}"]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            pb_grpc.DecisionServiceStub(channel).TrackEvent(
                pb.TrackEventRequest(user_id="ann", event_type="visit",
                                     traits={"first_name": pb.Value(string_value="Zoë")}),
                metadata=(("authorization", "Bearer svc-token"),), timeout=10)
        assert main(["profile", "get", "ann", *target, "--token", "ops-token"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["attributes"]["first_name"] == {"string_value": "Zoë"}
        assert [e["event_type"] for e in shown["events"]] == ["visit"]
        assert main(["profile", "get", "ann", *target, "--token", "svc-token"]) == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        ids = tmp_path / "erasure-requests.txt"
        ids.write_text("ann\n\n  bob  \nann\n")
        assert main(["profile", "forget", "--file", str(ids), *target,
                     "--token", "ops-token"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "ann: forgotten (1 stored record(s) deleted)", "bob: nothing was stored"]
        assert main(["profile", "get", "ann", *target, "--token", "ops-token"]) == 1
        assert "no profile for 'ann'" in capsys.readouterr().err
        assert main(["profile", "forget", *target, "--token", "ops-token"]) == 2
        assert main(["profile", "get", "ann", "bob", *target]) == 2
        capsys.readouterr()  # the wrong token: stopped at the first, not 3 refusals
        assert main(["profile", "forget", "x", "y", "z", *target, "--token", "svc-token"]) == 1
        err = capsys.readouterr().err
        assert err.count("PERMISSION_DENIED") == 1 and "3 of 3 not forgotten" in err
    finally:
        running.stop(grace=0.2)
