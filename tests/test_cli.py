"""The arbiter command: check, decide (in process and against a served port), serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.cli import main
from tests.conftest import RETAIL, ROOT, free_port
from tests.redis_proc import RedisServer


def test_check_accepts_the_retail_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(RETAIL)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_check_reports_file_line_col_and_exits_1(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.arb").write_text("placement p { channels: web }\n"
                                    "action x { placements: p value: 1 when: vipp }\n")
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.arb'}:2:41: error: unknown segment 'vipp'" in err
    assert err.splitlines()[2].strip() == "^"


def test_check_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.arb").write_text("segment s = \n")
    assert main(["check", str(tmp_path), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1
    assert report["diagnostics"][0]["line"] == 1



def test_check_warns_of_an_action_whose_end_has_passed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ends: 2025-12-01`` for December next year (a year typed wrong): the action is
    never shown and nothing said so."""
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date()
    past, future = today - dt.timedelta(days=3), today + dt.timedelta(days=30)
    (tmp_path / "a.arb").write_text(
        "placement p { channels: web }\n"
        f"action gone {{ placements: p  value: 1  ends: {past} }}\n"
        f"action coming {{ placements: p  value: 1  ends: {future} }}\n")
    assert main(["check", str(tmp_path)]) == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert (f"{tmp_path / 'a.arb'}:2:8: warning: action 'gone' ended on {past} ('ends'): "
            "it is never shown") in out
    assert "'coming'" not in out and "1 warning(s)" in out


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """``arbiter check DIR | head -1`` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    (tmp_path / "a.arb").write_text("".join(f"segment s{i} = profile.x{i} > 1\n"
                                            for i in range(2000)))
    with subprocess.Popen([sys.executable, "-m", "engine.cli", "check", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert b"warning" in proc.stdout.readline()
        proc.stdout.close()  # the reader has what it wanted
        err = proc.stderr.read().decode()
    assert proc.returncode == 141 and "Traceback" not in err, err

def test_check_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "/nonexistent/rules"]) == 1


def test_a_command_on_an_unreachable_redis_says_so_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["report", "--rules", str(RETAIL), "--redis", closed, "hero_test"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("arbiter report: the store did not answer: redis:")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_decide_in_process_with_profile_file(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decide", "--rules", str(RETAIL), "--user", "ann", "--placement", "email",
                 "--profile", str(RETAIL / "profiles" / "cart_abandoner.json"), "--explain"])
    out = capsys.readouterr().out
    assert code == 0
    assert "1. cart_discount" in out
    assert "segments: cart_abandoner" in out
    assert "why:" in out and "cap frequency" in out


def test_decide_reports_invalid_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "--rules", str(RETAIL), "--user", "u", "--placement", "x"]) == 2
    assert "placement: unknown placement 'x'" in capsys.readouterr().err


def test_serve_subprocess_then_decide_remotely(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), "--port",
         str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        code = main(["decide", "--target", f"127.0.0.1:{port}", "--user", "newbie",
                     "--placement", "homepage_banner", "--channel", "web", "--explain"])
        out = capsys.readouterr().out
        assert code == 0 and "1. onboarding_tour" in out and "why:" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output.decode()
    assert b"serving" in output


def test_serve_refuses_a_broken_ruleset(tmp_path: Path) -> None:
    (tmp_path / "bad.arb").write_text("segment = \n")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(tmp_path), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "bad.arb:1:9: error: syntax error" in proc.stderr
    assert time.monotonic() - started < 60


def test_serve_and_report_refuse_a_redis_cluster_node_with_one_clear_line(
        tmp_path: Path) -> None:
    """A Redis Cluster node answers MOVED to most keys: the server used to die at startup
    with a traceback. Now both commands say what is wrong and exit 2."""
    # the cluster bus on a port of its own (by default port + 10000, past 65535 for a
    # high free port: the server would not start)
    node = RedisServer(tmp_path, "--cluster-enabled", "yes", "--cluster-config-file",
                       str(tmp_path / "nodes.conf"), "--cluster-port", str(free_port()))
    node.start()
    try:
        for command in (["serve", "--port", "0"], ["report", "--models"]):
            proc = subprocess.run(
                [sys.executable, "-m", "engine.cli", *command, "--rules", "rulesets/retail",
                 "--redis", node.url], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 2, proc.stderr
            assert f"{node.url} is a Redis Cluster node" in proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        node.stop()


def test_serve_warns_of_a_redis_that_evicts_keys_when_full(tmp_path: Path) -> None:
    """An eviction policy drops profiles, records and idempotency keys without an error:
    the server says so at start (and serves); with noeviction it says nothing."""
    for policy, warned in (("allkeys-lru", True), ("noeviction", False)):
        node = RedisServer(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", policy)
        node.start()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--rules",
                 "rulesets/retail", "--redis", node.url, "--processes", "1"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                assert "arbiter: serving" in proc.stdout.readline()
            finally:
                proc.terminate()
                _, stderr = proc.communicate(timeout=30)
            assert (f"maxmemory-policy {policy}, maxmemory 0.1 GiB" in stderr) is warned, stderr
            assert "set maxmemory-policy noeviction" in stderr if warned else True
        finally:
            node.stop()


def test_the_cli_starts_without_the_heavy_dependencies() -> None:
    """`arbiter check` and `fmt` run in editors and pre-commit hooks: they load no River,
    NumPy, SciPy, gRPC or Redis client (commands import those when they run)."""
    code = ("import sys, engine.cli.app; print(sorted(m for m in "
            "('river', 'numpy', 'scipy', 'grpc', 'redis', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=60).stdout
    assert out.strip() == "[]"


def test_serve_settings_layer_flags_over_environment_over_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "arbiter.toml"
    settings.write_text('port = 7001\nworkers = 3\nmetrics-port = 9100\naccess-log = true\n')
    monkeypatch.setenv("ARBITER_PORT", "7002")
    monkeypatch.setenv("ARBITER_RELOAD_INTERVAL", "5")
    assert main(["serve", "--config", str(settings), "--workers", "6", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "port = 7002  # env ARBITER_PORT" in out  # the environment beats the file
    assert "workers = 6  # flag" in out  # a flag beats both
    assert "metrics-port = 9100  # file" in out and "access-log = true  # file" in out
    assert "reload-interval = 5.0  # env ARBITER_RELOAD_INTERVAL" in out
    assert 'host = "127.0.0.1"  # default' in out
    assert "# tls-cert = (unset)  # default" in out  # every setting is listed
    assert main(["serve", "--redis", "redis://app:s3cret@127.0.0.1:6379/0",
                 "--print-config"]) == 0  # a password is never shown
    assert 'redis = "redis://app:***@127.0.0.1:6379/0"  # flag' in capsys.readouterr().out
    monkeypatch.setenv("ARBITER_PROFILE_LAYOUT", "bogus")  # shown, then refused
    assert main(["serve", "--config", str(settings), "--print-config"]) == 2
    shown = capsys.readouterr()
    assert 'profile-layout = "bogus"  # env ARBITER_PROFILE_LAYOUT' in shown.out
    assert "--profile-layout must be packed or pairs, not 'bogus'" in shown.err
    assert tomllib.loads(out)["port"] == 7002  # and the output is a usable settings file
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "object at" not in capsys.readouterr().out  # defaults in help are values


def test_a_misspelt_arbiter_variable_is_named_not_ignored_silently(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`ARBITER_METRIC_PORT=9100` in a deployment's manifest was ignored without a word
    (no metrics, and nobody told why); the variables other commands read are not named."""
    monkeypatch.setenv("ARBITER_METRIC_PORT", "9100")
    monkeypatch.setenv("ARBITER_TOKEN", "for-the-cli-clients")
    assert main(["serve", "--print-config"]) == 0
    printed = capsys.readouterr()
    warned = [line for line in printed.err.splitlines() if "ARBITER_" in line]
    assert len(warned) == 1 and warned[0].endswith(
        "ARBITER_METRIC_PORT is not a setting (did you mean 'ARBITER_METRICS_PORT'?): "
        "ignored"), printed.err
    assert "# metrics-port = (unset)  # default" in printed.out


@pytest.mark.parametrize(("setting", "message"), [
    ('port = "abc"\n', "settings file: port: expected a whole number, got 'abc'"),
    ("prot = 1\n", "unknown key 'prot' (did you mean 'port'?)"),
    ("metrics_prot = 1\n", "unknown key 'metrics_prot' (did you mean 'metrics-port'?)"),
    ("port = \n", "Invalid value (at line 1, column 8)"),
    ("access-log = 3\n", "access-log: expected true or false"),
    ('[tokens]\n', "unknown key 'tokens'"),
])
def test_a_bad_settings_file_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str) -> None:
    settings = tmp_path / "arbiter.toml"
    settings.write_text(setting)
    # even when a flag overrides the bad value, the file is refused before serving
    assert main(["serve", "--config", str(settings), "--port", "0"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("env", "flags", "message"), [
    ({"ARBITER_PORT": "abc"}, [], "ARBITER_PORT: expected a whole number, got 'abc'"),
    ({"ARBITER_TOKENS": "svc=superuser"}, [], "unknown scope(s) superuser"),
    ({"ARBITER_TOKENS": "=decide"}, [], "ARBITER_TOKENS: expected token=scope"),
    ({}, ["--tokens-file", "TOKENS"], "'svc' must be a list of scope names"),
    ({}, ["--tls-cert", "/nowhere.pem"], "--tls-cert and --tls-key go together"),
    ({}, ["--tls-cert", "/nowhere.pem", "--tls-key", "/nowhere.key"], "No such file"),
])
def test_bad_security_settings_are_refused_before_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str], flags: list[str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[tokens]\nsvc = "decide"\n')
    flags = [str(tokens) if f == "TOKENS" else f for f in flags]
    assert main(["serve", "--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err


def test_serve_keeps_decisions_and_profiles_as_long_as_it_is_told() -> None:
    """``--attribution-window``: a decision takes feedback that long, then its record is
    gone (NOT_FOUND), so an operator sizes what the store keeps per decision; and
    ``--profile-retention``: a customer with no event for that long is gone."""
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), "--port",
         str(port), "--attribution-window", "2", "--profile-retention", "2"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.DecisionServiceStub(channel)

            def decide_and_click(wait: float) -> None:
                d = stub.Decide(pb.DecideRequest(user_id="ann", placement="homepage_banner",
                                                 channel="web"))
                time.sleep(wait)
                stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id,
                                                 action_id=d.actions[0].action_id,
                                                 outcome=pb.OUTCOME_CLICK))

            stub.TrackEvent(pb.TrackEventRequest(user_id="bob", event_type="visit"))
            decide_and_click(0.0)  # within the window: taken
            assert stub.GetProfile(pb.GetProfileRequest(user_id="bob")).found
            with pytest.raises(grpc.RpcError) as err:
                decide_and_click(2.5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "attribution window" in (err.value.details() or "")
            assert not stub.GetProfile(pb.GetProfileRequest(user_id="bob")).found
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
