"""API fuzzing: every request message of every service, built from the proto descriptors
with valid, boundary and hostile values (and as mutated or invalid bytes), sent to a real
server on a real port, over the memory store and over Redis.

Properties: every answer is OK or a declared status whose message names the field;
never INTERNAL or UNKNOWN; a rejected request leaves nothing behind; the server stays
healthy. The normal test run tries a short derandomized sample; ``make fuzz`` a long one
(``ARBITER_FUZZ_EXAMPLES``) and prints the counts.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.loader import load_path
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import admin_pb2, decision_pb2, report_pb2
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter
from tests.conftest import RETAIL, RedisServer
from tests.fuzzing import fuzz_settings
from tests.proto_strategies import messages, wire_bytes

FUZZ = fuzz_settings("ARBITER_FUZZ_EXAMPLES", 120)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
FIELDS = {"user_id", "placement", "channel", "context", "limit", "explain", "at", "requests",
          "decision_id", "action_id", "outcome", "value", "idempotency_key", "timestamp",
          "event_type", "properties", "traits", "experiment", "request", "item_id", "items",
          "item_ids", "request_id", "event_id", "events"}


def _methods() -> list[tuple[str, type[Message]]]:
    out = []
    for module in (decision_pb2, admin_pb2, report_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append((f"/{service.full_name}/{method.name}",
                            getattr(module, method.input_type.name)))
    return out


METHODS = _methods()
COUNTS: dict[str, Counter[str]] = {}
SAMPLES: dict[str, dict[str, list[str]]] = {}  # store -> "method CODE" -> first messages


class Target:
    """A served Arbiter and what the properties need to look at."""

    def __init__(self, store_name: str, running: server.RunningServer,
                 redis_client: redis.Redis | None) -> None:
        self.store_name = store_name
        self.running = running
        self.channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.redis = redis_client
        self.accepted_users: set[str] = set()


@pytest.fixture(scope="module", params=["memory", "redis"])
def target(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Target]:
    client = None
    if request.param == "redis":
        if redis_server.process is None:
            redis_server.start()
        redis_server.flush()
        store: Any = RedisStore(redis_server.url, cache_ttl=0, namespace="fuzz")
        client = redis.Redis.from_url(redis_server.url)
    else:
        store = MemoryStore()
    running = server.start(Arbiter(load_path(RETAIL), store, seed=1), "127.0.0.1", 0)
    t = Target(request.param, running, client)
    yield t
    health = health_pb2_grpc.HealthStub(t.channel).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # still healthy
    t.channel.close()
    running.stop(grace=0.2)
    if client is not None:
        client.close()
    _report(request.param)


def _report(store_name: str) -> None:
    counts = COUNTS.get(store_name, Counter())
    print(f"\nAPI fuzz, {store_name} store: {sum(counts.values())} requests")
    samples = SAMPLES.get(store_name, {})
    for key, n in sorted(counts.items()):
        print(f"  {key}: {n}")
        for message in samples.get(key, []) if not key.endswith(" OK") else []:
            print(f"      e.g. {message[:110]}")
    out = os.environ.get("ARBITER_FUZZ_REPORT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"api-{store_name}.json").write_text(json.dumps(counts, indent=1))


def _user_of(request_class: type[Message], data: bytes) -> str | None:
    try:
        message = request_class.FromString(data)
    except DecodeError:
        return None
    return getattr(message, "user_id", None) or None


def _batch_users(request_class: type[Message], data: bytes) -> set[str]:
    """The customers of a DecideBatch's requests or a TrackEventBatch's events (an
    accepted batch writes for each of them: records, and with record_impressions their
    contacts; profiles)."""
    try:
        message = request_class.FromString(data)
    except DecodeError:
        return set()
    items = [*getattr(message, "requests", ()), *getattr(message, "events", ())]
    return {r.user_id for r in items if r.user_id}


def _left_behind(t: Target, user: str) -> list[str]:
    """What the store holds about a user no accepted request ever named."""
    found = []
    if t.stub.GetProfile(decision_pb2.GetProfileRequest(user_id=user), timeout=5).found:
        found.append("profile")
    if t.redis is not None:
        for kind in ("p", "udz", "ukz", "ulz"):
            if t.redis.exists(f"fuzz:{kind}:{user}"):
                found.append(kind)
    return found


REQUESTS = st.sampled_from(METHODS).flatmap(
    lambda m: st.tuples(st.just(m), st.one_of(
        messages(m[1]).map(lambda msg: msg.SerializeToString()), wire_bytes(m[1]))))


@FUZZ
@given(case=REQUESTS)
def test_every_request_gets_a_declared_answer_and_rejections_leave_nothing(
        target: Target, case: tuple[tuple[str, type[Message]], bytes]) -> None:
    (path, request_class), data = case
    method = path.rsplit("/", 1)[1]
    code, details = grpc.StatusCode.OK, ""
    try:
        target.channel.unary_unary(path)(data, timeout=10)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
    key = f"{method} {code.name}"
    COUNTS.setdefault(target.store_name, Counter())[key] += 1
    seen = SAMPLES.setdefault(target.store_name, {}).setdefault(key, [])
    if len(seen) < 2 and details not in seen:
        seen.append(details)
    assert code in ALLOWED, (method, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = details.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
        assert field in FIELDS and ": " in details, (method, details)
    elif code != grpc.StatusCode.OK:
        assert details, (method, code)
    if code == grpc.StatusCode.OK and method in ("DecideBatch", "TrackEventBatch"):
        target.accepted_users.update(_batch_users(request_class, data))
    user = _user_of(request_class, data)
    if user is None or method in ("GetProfile", "ForgetProfile"):
        return
    if code == grpc.StatusCode.OK and method in ("Decide", "TrackEvent", "DecideBatch"):
        target.accepted_users.add(user)
    elif code != grpc.StatusCode.OK and user not in target.accepted_users and len(user) <= 256:
        assert not _left_behind(target, user), (method, code, details)
