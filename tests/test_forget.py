"""ForgetProfile forgets everything: then no key, stream entry or log line holds the user."""

from __future__ import annotations

from pathlib import Path

import redis

from adapters.decision_log import JsonlDecisionLog
from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.service import Arbiter

KEY = b"snapshot key"


def _everything(client: redis.Redis) -> bytes:  # type: ignore[type-arg]
    """Every key's name and value, streams and hashes included, as one blob."""
    out = []
    for key in client.keys("*"):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            out += [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                out.append(entry_id)
                out += [b for kv in fields.items() for b in kv]
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
    return b"\n".join(out)


def _activity(arb: Arbiter, user: str, n: int) -> list[str]:
    arb.track(user_id=user, event_type="visit", traits={"first_name": "Gina", "tier": "gold"})
    ids = []
    for i in range(n):
        d = arb.decide(user_id=user, placement="homepage_banner", channel="web")
        ids.append(d.decision_id)
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="impression", idempotency_key=f"{user}-imp-{i}")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
    return ids


def test_forget_leaves_nothing_in_the_store_streams_snapshots_or_logs(
        redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    arb = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY,
                  decision_log=JsonlDecisionLog(path))
    gone = _activity(arb, "gina-forget-me", 5)
    kept = _activity(arb, "kim", 5)
    arb.learn()
    arb.learner.snapshot()  # models and the labels they await, in Redis
    assert arb.forget("gina-forget-me") == 1 + 5
    arb.close()  # flush the decision log
    client = redis.Redis.from_url(redis_url)
    everything = _everything(client)
    log = path.read_text()
    for trace in ("gina-forget-me", *gone):
        assert trace.encode() not in everything, trace
        assert trace not in log, trace
    for trace in ("kim", *kept):  # nobody else was forgotten
        assert trace in log
    assert any(k.decode().endswith(":kim") for k in client.keys("*"))
