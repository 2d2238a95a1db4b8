"""ForgetProfile forgets everything: then no key, stream entry or log line holds the user."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from adapters.decision_log import JsonlDecisionLog
from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.records import pseudonym
from engine.service import Arbiter
from tests.conftest import until

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


def _lines_about(path: Path, users: set[str]) -> int:
    """Lines of the log whose user is one of ``users``."""
    return sum(1 for line in path.read_text().splitlines()
               if line.strip() and json.loads(line).get("user_id") in users)


def test_a_forget_reaches_every_process_decision_log(
        redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    """Two serving processes (or replicas) on one Redis, each with its own decision log:
    ForgetProfile on one erases the user's lines there at once and, on its next look at
    the store's forgotten users, in the other's (decisions and the outcomes it logged
    for the first one's decisions); one restarted meanwhile catches up from where its
    log's ``.forgotten`` file says it was."""
    first_log, second_log = tmp_path / "decisions.0.jsonl", tmp_path / "decisions.1.jsonl"
    first = Arbiter(retail, RedisStore(redis_url), seed=1,
                    decision_log=JsonlDecisionLog(first_log, flush_seconds=0.05))
    second = Arbiter(retail, RedisStore(redis_url), seed=2,
                     decision_log=JsonlDecisionLog(second_log, flush_seconds=0.05))
    second.erase_forgotten_elsewhere()  # (following from now on: the cursor kept)
    assert until(lambda: second_log.with_name(second_log.name + ".forgotten").exists())
    for user in ("gina", "kim", "lee"):
        _activity(first, user, 2)
        _activity(second, user, 2)
        made_first = first.decide(user_id=user, placement="homepage_banner", channel="web")
        second.feedback(decision_id=made_first.decision_id,  # an outcome in the other log
                        action_id=made_first.actions[0].action_id, outcome="click")
    assert until(lambda: _lines_about(second_log, {"gina"}) == 2 * 3 + 1)
    assert _lines_about(first_log, {"gina"}) == 2 * 3 + 1
    assert first.forget("gina") > 0
    assert _lines_about(first_log, {"gina"}) == 0  # its own: erased before the answer
    assert _lines_about(second_log, {"gina"}) > 0
    assert first.store.forgotten_since("0-0")[0] == []  # (its own: done already)
    assert second.store.forgotten_since("0-0")[0] == [pseudonym("gina")]
    first.erase_forgotten_elsewhere()
    second.erase_forgotten_elsewhere()
    assert until(lambda: _lines_about(second_log, {"gina"}) == 0)
    assert _lines_about(second_log, {"kim", "lee"}) == 2 * (2 * 3 + 1)
    assert "gina" not in second_log.read_text()
    # the second process stops; kim is forgotten meanwhile; it starts again on its log
    assert second.decision_log is not None
    second.decision_log.close()
    first.forget("kim")
    again = Arbiter(retail, RedisStore(redis_url), seed=2,
                    decision_log=JsonlDecisionLog(second_log, flush_seconds=0.05))
    again.erase_forgotten_elsewhere()
    assert until(lambda: _lines_about(second_log, {"kim"}) == 0)
    assert _lines_about(second_log, {"lee"}) == 2 * 3 + 1
    for arb in (first, again):
        arb.close()


def test_a_forgotten_stream_that_is_not_one_stops_neither_start_nor_learning(
        redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    """The ``forgotten`` key holding something else (a misconfigured neighbour): the
    server starts, decides and learns; the decision log waits for a stream (warned)."""
    client = redis.Redis.from_url(redis_url)
    client.set("arb:forgotten", b"not a stream")
    arb = Arbiter(retail, RedisStore(redis_url), seed=1,
                  decision_log=JsonlDecisionLog(tmp_path / "d.jsonl"))
    _activity(arb, "ann", 1)
    arb._forgotten_due = 0.0  # (the next sync looks)
    assert arb.sync() > 0
    client.delete("arb:forgotten")
    arb._forgotten_due = 0.0
    arb.sync()
    log = arb.decision_log
    assert log is not None and until(lambda: log.forget_cursor == "0-0")
    arb.close()


def test_a_backlog_of_forgets_is_erased_in_one_look(
        redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    """More forgets than one page of the stream while a process was away: its next look
    reads every page and erases them all in one pass."""
    from engine import service

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"kind": "decision", "decision_id": f"d{k}",
                                        "user_id": f"user-{k}", "at": 1.0}) + "\n"
                            for k in range(30)))
    (tmp_path / "d.jsonl.forgotten").write_text("0-0\n")
    other = Arbiter(retail, RedisStore(redis_url), seed=1)
    for k in range(25):
        other.forget(f"user-{k}")
    original, service.FORGOTTEN_PAGE = service.FORGOTTEN_PAGE, 4
    try:
        arb = Arbiter(retail, RedisStore(redis_url), seed=2,
                      decision_log=JsonlDecisionLog(path, flush_seconds=0.05))
    finally:
        service.FORGOTTEN_PAGE = original
    assert until(lambda: _lines_about(path, {f"user-{k}" for k in range(30)}) == 5)
    assert _lines_about(path, {f"user-{k}" for k in range(25, 30)}) == 5
    arb.close()
    other.close()


def test_a_damaged_forgotten_entry_is_stepped_over(
        redis_url: str, retail: Ruleset, tmp_path: Path) -> None:
    """Entries of the ``forgotten`` stream that are not ours (bytes that are not UTF-8,
    fields missing): the follower moves past them and still erases the users after."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"kind": "decision", "decision_id": "d1", "user_id": "ann",
                                "at": 1.0}) + "\n")
    arb = Arbiter(retail, RedisStore(redis_url), seed=1,
                  decision_log=JsonlDecisionLog(path, flush_seconds=0.05))
    client = redis.Redis.from_url(redis_url)
    client.xadd("arb:forgotten", {b"u": b"\xff\xfe", b"by": b"\xff"})
    client.xadd("arb:forgotten", {b"x": b"no user"})
    client.xadd("arb:forgotten", {b"u": pseudonym("ann").encode(), b"by": b"other"})
    arb.erase_forgotten_elsewhere()
    assert until(lambda: _lines_about(path, {"ann"}) == 0)
    arb.close()
