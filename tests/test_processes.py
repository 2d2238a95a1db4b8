"""``arbiter serve --processes 2``: two serving processes on one port over a shared Redis,
a parent that restarts a killed child and stops them all on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import RETAIL, ROOT, free_port


def decisions_counted(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=5).read().decode()
    return sum(float(m) for m in re.findall(
        r'^arbiter_rpc_total\{code="OK",method="Decide"\} (\S+)$', text, re.M))


def two_free_ports() -> int:
    """A port P with P and P + 1 both free (the children's metrics ports)."""
    import socket

    while True:
        first = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first


def serve_two(redis_url: str, port: int, metrics: int, *extra: str,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    """``arbiter serve --processes 2`` on Redis, started: the parent, and its output's
    lines as they come (a thread reads them)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), "--port",
         str(port), "--redis", redis_url, "--processes", "2", "--metrics-port", str(metrics),
         *extra], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    out = proc.stdout
    threading.Thread(target=lambda: lines.extend(iter(out.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 60
    while not any("with 2 processes" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("".join(lines))
        time.sleep(0.1)
    return proc, lines


def test_two_processes_share_the_port_and_the_parent_restarts_a_killed_one(
        redis_url: str) -> None:
    port, metrics = free_port(), two_free_ports()
    proc, lines = serve_two(redis_url, port, metrics)
    try:
        pids = [int(p) for p in re.findall(r"pids (\d+), (\d+)", "".join(lines))[0]]
        # connections are spread by the kernel: many channels reach both processes
        for i in range(40):
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.use_local_subchannel_pool", 1)]) as channel:
                pb_grpc.DecisionServiceStub(channel).Decide(
                    pb.DecideRequest(user_id=f"u{i}", placement="email"), timeout=5)
        counts = [decisions_counted(metrics), decisions_counted(metrics + 1)]
        assert sum(counts) == 40 and min(counts) > 0, counts
        # a child killed outright is replaced, and the port keeps answering meanwhile
        # (a connection that was queued on the killed child is reset: clients reconnect)
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any("restarting" in line for line in lines) or sum(
                f"pid {pids[0]}]" not in line and "[process 0" in line
                and "arbiter: serving" in line for line in lines) < 1:
            assert time.monotonic() < deadline, "".join(lines)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                pb_grpc.DecisionServiceStub(channel).Decide(
                    pb.DecideRequest(user_id="during", placement="email"), timeout=5,
                    wait_for_ready=True)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)
    for pid in pids[1:]:  # every child is gone with the parent
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()


def test_each_process_logs_its_decisions_and_a_forget_reaches_every_log(
        redis_url: str, tmp_path: Path) -> None:
    """``--processes 2 --decision-log F.jsonl``: process i writes ``F.i.jsonl``; a user
    forgotten through either process is erased from both logs (the other's at its next
    look at the store's forgotten users, every ~10 s); ``arbiter replay`` reads both."""
    from engine.cli.app import main

    port, metrics = free_port(), two_free_ports()
    log = tmp_path / "decisions.jsonl"
    proc, lines = serve_two(redis_url, port, metrics, "--decision-log", str(log))
    logs = [tmp_path / "decisions.0.jsonl", tmp_path / "decisions.1.jsonl"]

    def about(user: str) -> list[int]:
        return [sum(1 for line in path.read_text().splitlines()
                    if line.strip() and f'"user_id":"{user}"' in line) for path in logs]

    try:
        for i in range(40):  # (a channel each: the kernel spreads them over processes)
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = pb_grpc.DecisionServiceStub(channel)
                for user in (f"u{i}", "gina"):
                    stub.Decide(pb.DecideRequest(user_id=user, placement="homepage_banner",
                                                 channel="web"), timeout=5)
        deadline = time.monotonic() + 10
        while min(about("gina")) == 0 or sum(about("gina")) < 40:  # (written every 0.5 s)
            assert time.monotonic() < deadline, about("gina")
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb_grpc.DecisionServiceStub(channel).ForgetProfile(
                pb.ForgetProfileRequest(user_id="gina"), timeout=10)
        assert 0 in about("gina")  # the process that answered: erased before it did
        deadline = time.monotonic() + 30
        while about("gina") != [0, 0]:
            assert time.monotonic() < deadline, about("gina")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)
    assert sum(about("u7")) == 1 and not log.exists()
    assert main(["replay", *map(str, logs), "--rules", str(RETAIL)]) == 0


def test_processes_above_one_need_redis() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL),
         "--processes", "2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--processes above 1 needs --redis" in out.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (("--max-concurrent-rpcs", "0"), "--max-concurrent-rpcs must be 1 or more"),
    (("--max-pending-rpcs", "0"), "--max-pending-rpcs must be 1 or more"),
    (("--max-connection-age", "-1"), "--max-connection-age must be 0 (never) or more"),
    (("--max-connection-age", "nan"), "--max-connection-age must be 0 (never) or more"),
    (("--max-connection-age", "1e10"), "at most 1,000,000 seconds"),
    (("--max-pending-rpcs", "100000000000"), "--max-pending-rpcs must be 1 or more, at most"),
    (("--max-concurrent-rpcs", "100000000000"),
     "--max-concurrent-rpcs must be 1 or more, at most"),
    (("--port", "99999"), "--port must be 0 (a free one) to 65535, not 99999"),
    (("--metrics-port", "-1"), "--metrics-port must be 0 (a free one) to 65535"),
    (("--health-port", "70000"), "--health-port must be 0 (a free one) to 65535"),
    (("--learners", "one", "--redis", "redis://127.0.0.1:1/0"),
     "--learners one needs a snapshot key"),
    (("--default-deadline", "0"), "--default-deadline must be above 0"),
    (("--learning-log-max", "-1"), "--learning-log-max must be 0 (no cap) or more"),
    (("--default-deadline", "inf"), "--default-deadline must be above 0 and finite"),
    (("--attribution-window", "0"), "--attribution-window must be above 0"),
    (("--attribution-window", "nan"), "--attribution-window must be above 0 and finite"),
    (("--attribution-window", "inf"), "--attribution-window must be above 0 and finite"),
    (("--profile-retention", "-1"), "--profile-retention must be 0 (for ever) or more"),
    (("--profile-retention", "nan"), "--profile-retention must be 0 (for ever) or more"),
    (("--reward-wait", "nan"), "--reward-wait must be 0 or more, and finite"),
    (("--workers", "0"), "--workers must be 1 or more"),  # (-1 and 0 ran one thread)
    (("--workers", "5000"), "--workers must be 1 or more, at most 1,024"),
    (("--reload-interval", "-1"), "--reload-interval must be 0 or more"),  # (watched none)
    (("--drain", "-5"), "--drain must be 0 or more seconds"),
    (("--pre-stop", "nan"), "--pre-stop must be 0 or more seconds, and finite")])
def test_serving_limits_out_of_range_are_refused(flags: tuple[str, ...], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), *flags],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr


def test_a_namespace_from_the_environment_is_checked() -> None:
    """``ARBITER_NAMESPACE`` (or ``--namespace``): a prefix that would break the keys (a
    brace is a Cluster hash tag) is refused before anything starts."""
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), "--redis",
         "redis://127.0.0.1:1/0"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARBITER_NAMESPACE": "a{b}"},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "arbiter serve: namespace 'a{b}': 1 to 64 letters" in out.stderr


def test_a_record_layout_from_the_environment_is_checked() -> None:
    """``--record-layout`` has choices on the command line; from ``ARBITER_RECORD_LAYOUT``
    (or a file) an unknown one is refused the same way, not with a traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARBITER_RECORD_LAYOUT": "json"},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--record-layout must be compact or array or map, not 'json'" in out.stderr


@pytest.mark.parametrize("taken", ["--port", "--metrics-port", "--health-port",
                                   "--processes 2"])
def test_a_port_in_use_is_one_line_not_a_traceback(taken: str, redis_url: str) -> None:
    """Another program listens on the port asked for: ``arbiter serve`` says which
    address it cannot listen on and exits 1 (the main port of one process or of the
    supervisor, the metrics port, the health port)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        flags = (["--port", str(port), "--processes", "2", "--redis", redis_url]
                 if taken == "--processes 2" else
                 ["--port", str(port)] if taken == "--port" else
                 ["--port", str(free_port()), taken, str(port)])
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "serve", "--rules", str(RETAIL), *flags],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def metric(metrics_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=5).read().decode()
    found = re.findall(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    return float(found[0]) if found else 0.0


def test_with_one_learner_one_process_reads_the_log_and_the_other_adopts(
        redis_url: str) -> None:
    """``--learners one`` over two processes: feedback through either, exactly one of
    them applies the learning log, the other takes its published snapshots."""
    port, metrics = free_port(), two_free_ports()
    proc, lines = serve_two(redis_url, port, metrics, "--learners", "one",
                            env={"ARBITER_SNAPSHOT_KEY": "test key"})
    try:
        for i in range(40):  # new connections: both processes take feedback
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = pb_grpc.DecisionServiceStub(channel)
                d = stub.Decide(pb.DecideRequest(user_id=f"u{i}", placement="homepage_banner",
                                                 channel="web"), timeout=5)
                stub.Feedback(pb.FeedbackRequest(
                    decision_id=d.decision_id, action_id=d.actions[0].action_id,
                    outcome=pb.OUTCOME_CLICK), timeout=5)
        deadline = time.monotonic() + 30  # published within 5 s, adopted within 1 s
        while True:
            leaders = [metric(m, "arbiter_learning_leader") for m in (metrics, metrics + 1)]
            applied = [metric(m, "arbiter_learning_events_applied")
                       for m in (metrics, metrics + 1)]
            adopted = [metric(m, "arbiter_model_snapshots_adopted")
                       for m in (metrics, metrics + 1)]
            one = leaders.index(1.0) if leaders.count(1.0) == 1 else None
            if (one is not None and applied[one] >= 40 and applied[1 - one] == 0
                    and adopted[1 - one] > 0):
                break
            assert time.monotonic() < deadline, (leaders, applied, adopted, "".join(lines))
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
