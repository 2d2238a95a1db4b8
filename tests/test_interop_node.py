"""A client in another language: Node.js (@grpc/grpc-js, stubs loaded from proto/ at run
time) against a real server. Skipped where node and npm are not installed; the packages
come from the npm registry (tests/interop/package-lock.json) on the first run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import Ruleset
from engine.grpc import server
from engine.grpc.security import parse_tokens, server_credentials
from engine.grpc.server import RunningServer
from engine.service import Arbiter
from tests.test_security import pki  # noqa: F401  (the certificates, made by openssl)

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests/interop"

pytestmark = pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")),
                                reason="node and npm are not installed")


@pytest.fixture(scope="module")
def node_client() -> Path:
    if not (CLIENT / "node_modules/@grpc/grpc-js").exists():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                       cwd=CLIENT, check=True, capture_output=True, timeout=300)
    return CLIENT / "client.mjs"


def test_a_node_client_decides_tracks_and_reports_outcomes(node_client: Path,
                                                           running: RunningServer) -> None:
    seen = _run(node_client, running)
    tracked = seen["track"]["response"]["profile"]
    assert tracked["events"][0]["total_value"] == 89.5
    assert tracked["events"][0]["first_at"]["nanos"] == 500_000_000  # a Timestamp as sent
    decision = seen["decide"]["response"]
    top = decision["actions"][0]
    assert top["action_id"] == "cart_reminder"
    assert top["content"]["subject"] == "Nadia, you left something in your cart"
    assert any(r["kind"] == "segment" and r["name"] == "cart_abandoner" for r in top["reasons"])
    assert len(decision["decision_id"]) == 32 and decision["decided_at"]["seconds"] > 0
    assert seen["impression"]["response"] == {"duplicate": False}
    assert seen["click"]["response"] == {"duplicate": False}
    assert seen["click_again"]["response"] == {"duplicate": True}  # the same key: once
    contacts = {c["action_id"]: c for c in seen["profile"]["response"]["profile"]["contacts"]}
    assert (contacts["cart_reminder"]["impressions"], contacts["cart_reminder"]["clicks"]) == (1, 1)
    batch = seen["batch"]["response"]["results"]
    assert batch[0]["decision"]["actions"] and batch[1]["error"].startswith("user_id")
    first, again = seen["purchase"]["response"], seen["purchase_again"]["response"]
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert again["profile"]["events"][0]["count"] == 1  # the retry counted once
    loaded = seen["track_batch"]["response"]["results"]
    assert [(r["status"], r["duplicate"]) for r in loaded] == [
        ("", False), ("INVALID_ARGUMENT", False), ("", True)]
    assert loaded[1]["error"].startswith("event_type: ")
    keyed, again = seen["keyed"]["response"], seen["keyed_again"]["response"]
    assert (keyed["duplicate"], again["duplicate"]) == (False, True)
    assert again["decision_id"] == keyed["decision_id"] and again["actions"] == keyed["actions"]
    assert seen["keyed_other"]["code"] == "FAILED_PRECONDITION"
    assert seen["removed"]["ok"], seen["removed"]  # a trait's null_value removes it
    before = seen["profile"]["response"]["profile"]["attributes"]
    after = seen["profile_after"]["response"]["profile"]["attributes"]
    assert "email_opt_in" in before and "email_opt_in" not in after and "first_name" in after


REFUSED = {"no_outcome": "outcome", "bad_placement": "placement",
           "bad_context": "context.cart_value", "no_user": "user_id"}


def test_a_node_client_reads_the_field_of_each_refused_request(node_client: Path,
                                                              running: RunningServer) -> None:
    seen = _run(node_client, running)
    for case, field in REFUSED.items():
        refused = seen[case]
        assert refused["ok"] is False and refused["code"] == "INVALID_ARGUMENT", case
        assert refused["details"].startswith(f"{field}: "), case
        assert [v["field"] for v in refused["violations"]] == [field], case  # BadRequest


def test_a_node_client_over_mutual_tls_with_bearer_tokens(node_client: Path, retail: Ruleset,
                                                          pki: Path) -> None:  # noqa: F811
    running = server.start(
        Arbiter(retail, MemoryStore(), seed=1), "127.0.0.1", 0, workers=2,
        credentials=server_credentials(pki / "server.pem", pki / "server.key", pki / "ca.pem"),
        tokens=parse_tokens("svc-token=decide,feedback;ops-token=admin"))
    try:
        out = subprocess.run(["node", str(CLIENT / "secure_client.mjs"),
                              f"localhost:{running.port}", str(ROOT / "proto"), str(pki),
                              "svc-token", "ops-token", "wrong-token", ""],
                             capture_output=True, text=True, timeout=60, check=True)
    finally:
        running.stop(grace=0.2)
    seen = json.loads(out.stdout)
    assert seen["svc-token"].startswith("OK ")
    assert seen["ops-token"] == "PERMISSION_DENIED"  # a token without the decide scope
    assert seen["wrong-token"] == seen["(none)"] == "UNAUTHENTICATED"
    assert seen["no client certificate"] == "UNAVAILABLE"  # the TLS handshake is refused


def _run(node_client: Path, running: RunningServer) -> dict[str, Any]:
    out = subprocess.run(["node", str(node_client), f"127.0.0.1:{running.port}",
                          str(ROOT / "proto")], capture_output=True, text=True, timeout=60,
                         check=True)
    seen: dict[str, Any] = json.loads(out.stdout)
    return seen
