"""Build the wheel, install it in a fresh venv outside the checkout, and serve with no flags.

    python tests/wheel_smoke.py

Run by .ci/run after the test suite. Checks that an installed Arbiter has what it needs
(the example ruleset is package data, nothing reads the checkout): ``arbiter --version``,
then ``arbiter serve`` with no flags from an empty directory answers a Decide, and
recommends from the shipped catalogue.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = """
import sys, grpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb, decision_pb2_grpc as pb_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.DecisionServiceStub(channel)
    d = stub.Decide(
        pb.DecideRequest(user_id="new", placement="homepage_banner", channel="web"), timeout=10)
    cart = stub.Decide(pb.DecideRequest(
        user_id="new", placement="cart_page", channel="web",
        context={"cart_value": pb.Value(number_value=120)}), timeout=10)
look = [a for a in cart.actions if a.action_id == "complete_the_look"]
assert look and len(look[0].items) == 3, cart  # the shipped catalogue (items.jsonl) serves
print(d.actions[0].action_id)
"""


def run(*cmd: str, cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=600).stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
            str(ROOT), cwd=work)
        wheel = next((work / "dist").glob("*.whl"))
        run(sys.executable, "-m", "venv", str(work / "venv"), cwd=work)
        python, arbiter = work / "venv/bin/python", work / "venv/bin/arbiter"
        run(str(python), "-m", "pip", "install", "-q", str(wheel), cwd=work)
        print(run(str(arbiter), "--version", cwd=work).strip())
        empty = work / "elsewhere"
        empty.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        server = subprocess.Popen([str(arbiter), "serve", "--port", port], cwd=empty,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            top = run(str(python), "-c", CLIENT, f"127.0.0.1:{port}", cwd=empty).strip()
            assert top == "onboarding_tour", top
            print(f"an installed wheel serves the example ruleset: top action {top}")
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=30)
            if server.returncode not in (0, -15):
                print(out)
                raise SystemExit(f"arbiter serve exited {server.returncode}")


if __name__ == "__main__":
    main()
