"""Decide's ``request_id``: a retried Decide or DecideBatch gets its first answer again
and records nothing new (caps count a send once), on both stores, through a real server;
a private redis-server is stalled with ``CLIENT PAUSE`` for the degraded case."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.loader import load_text
from engine.cli import main
from engine.decide.contacts import contact_entries
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.ports import Store, answer_key
from engine.service import Arbiter
from tests.conftest import RedisServer

CAPPED = """
placement mail { channels: email  fallback: digest }
action promo { placements: mail  value: 10  cap: 2 per 7d }
action digest { placements: mail  value: 1  when: false }
"""


def _memory(_: str) -> Store:
    return MemoryStore()


def _redis(url: str) -> Store:
    return RedisStore(url, cache_ttl=0, decide_timeout=0.3)


STORES: dict[str, Callable[[str], Store]] = {"memory": _memory, "redis": _redis}


@pytest.fixture(params=[*sorted(STORES), "cluster"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[pb_grpc.DecisionServiceStub,
                                                             Arbiter]]:
    """A server on each store; ``cluster``: Redis on a three-primary Redis Cluster (the
    namespace's one slot)."""
    fixture = {"redis": "redis_url", "cluster": "cluster_url"}.get(request.param)
    url = request.getfixturevalue(fixture) if fixture else ""
    arbiter = Arbiter(load_text(CAPPED), STORES.get(request.param, _redis)(url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.DecisionServiceStub(channel), arbiter
    channel.close()
    running.stop(grace=0.2)


def _send(stub: pb_grpc.DecisionServiceStub, request_id: str, user_id: str = "ann"
          ) -> pb.DecideBatchResult:
    one = pb.DecideRequest(user_id=user_id, placement="mail", request_id=request_id)
    response = stub.DecideBatch(pb.DecideBatchRequest(requests=[one],
                                                      record_impressions=True))
    return response.results[0]


def test_a_retried_batch_gets_its_first_answer_and_its_send_counts_once(
        served: tuple[pb_grpc.DecisionServiceStub, Arbiter]) -> None:
    """A promotion capped at 2 a week. Send r1 three times (a client retrying a call
    whose answer it lost), then r2 and r3: the retries are r1's answer again, so the cap
    sees two sends and r3 gets the fallback. Without request ids the retries would have
    counted: r2 would already be over the cap."""
    stub, _ = served
    first = _send(stub, "r1")
    again = [_send(stub, "r1"), _send(stub, "r1")]
    assert first.decision.actions[0].action_id == "promo" and not first.decision.duplicate
    for retry in again:
        assert retry.decision.duplicate and not retry.error
        assert retry.decision.decision_id == first.decision.decision_id
        assert [a.action_id for a in retry.decision.actions] == ["promo"]
    assert _send(stub, "r2").decision.actions[0].action_id == "promo"
    assert _send(stub, "r3").decision.actions[0].action_id == "digest"


def test_decide_with_a_request_id_answers_the_same_and_refuses_it_for_another_request(
        served: tuple[pb_grpc.DecisionServiceStub, Arbiter]) -> None:
    stub, _ = served
    request = pb.DecideRequest(user_id="bo", placement="mail", channel="email",
                               request_id="send-1")
    first = stub.Decide(request, timeout=2)
    second = stub.Decide(request, timeout=2)
    assert (first.duplicate, second.duplicate) == (False, True)
    second.duplicate = False
    assert second == first
    # the kept answer's decision takes feedback as the first did
    assert not stub.Feedback(pb.FeedbackRequest(
        decision_id=second.decision_id, action_id=second.actions[0].action_id,
        outcome=pb.OUTCOME_CLICK), timeout=2).duplicate
    other = pb.DecideRequest(user_id="bo", placement="mail", channel="email", limit=1,
                             request_id="send-1")
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(other, timeout=2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "request_id: already used" in err.value.details()  # type: ignore[attr-defined]
    # another customer's id of the same name is theirs alone
    assert not stub.Decide(pb.DecideRequest(user_id="cy", placement="mail",
                                            request_id="send-1"), timeout=2).duplicate
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(pb.DecideRequest(user_id="bo", placement="mail",
                                     request_id="x" * 300), timeout=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.value.details().startswith("request_id:")  # type: ignore[attr-defined]


def test_a_request_id_being_decided_is_aborted_and_a_lapsed_claim_decides_again(
        served: tuple[pb_grpc.DecisionServiceStub, Arbiter]) -> None:
    """A claim left by a call still deciding (or by a server that stopped mid-call):
    ABORTED, in the batch as its own result; once the claim lapses, a retry decides."""
    stub, arbiter = served
    import asyncio

    from engine.grpc import answers

    request = pb.DecideRequest(user_id="dee", placement="mail", request_id="r9")
    io = arbiter.store.decide_io()

    async def claim() -> None:
        claim = answers.claim(answers.fingerprint(request))
        assert await io.claim_requests([("dee", "r9", claim)], 0.6, 1.0) == [None]
        await io.aclose()

    asyncio.run(claim())
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(request, timeout=2)
    assert err.value.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
    result = _send(stub, "r9", "dee")  # (the same request, in a batch)
    assert (result.status, result.error.split(":")[0]) == ("ABORTED", "request_id")
    time.sleep(0.7)
    decided = stub.Decide(request, timeout=2)
    assert decided.actions and not decided.duplicate
    assert stub.Decide(request, timeout=2).duplicate


def test_concurrent_calls_with_one_request_id_record_one_decision(
        served: tuple[pb_grpc.DecisionServiceStub, Arbiter]) -> None:
    """Twelve threads send the same keyed batch at once: one decides, each other gets
    its answer or ABORTED; the cap then sees one send."""
    stub, _ = served
    results: list[pb.DecideBatchResult] = []
    lock = threading.Lock()

    def send() -> None:
        result = _send(stub, "burst")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decided = {r.decision.decision_id for r in results if not r.error}
    assert len(decided) == 1
    assert all(r.status == "ABORTED" for r in results if r.error)
    assert sum(not r.decision.duplicate for r in results if not r.error) == 1
    assert _send(stub, "next").decision.actions[0].action_id == "promo"  # 2nd send
    assert _send(stub, "last").decision.actions[0].action_id == "digest"


def test_forget_profile_erases_the_kept_answers(
        served: tuple[pb_grpc.DecisionServiceStub, Arbiter]) -> None:
    stub, _ = served
    first = _send(stub, "f1")
    assert stub.ForgetProfile(pb.ForgetProfileRequest(user_id="ann"), timeout=5).deleted
    after = _send(stub, "f1")
    assert not after.decision.duplicate
    assert after.decision.decision_id != first.decision.decision_id


def test_kept_answers_expire_with_their_decisions_in_memory() -> None:
    """Bounded memory: an answer, its claim and its place in the customer's index go
    when the decision's attribution window ends, as Redis TTLs would."""
    now = [1_000.0]
    store = MemoryStore(clock=lambda: now[0])
    for i in range(100):
        assert store.claim_request(f"u{i}", "r", b"P", 5.0) is None
        store.save_answer(f"u{i}", "r", b"A", 60.0)
    assert store.claim_request("u1", "r", b"P", 5.0) == b"A"
    store.claim_request("gone", "r", b"P", 5.0)  # a claim never answered: lapses
    now[0] += 61
    assert store.claim_request("u1", "r", b"P", 5.0) is None  # (its own claim again)
    assert set(store._answers) == {answer_key("u1", "r")}
    assert set(store._user_keys) == {"u1"}


def test_a_degraded_answer_is_not_kept(redis_url: str) -> None:
    """Redis stalled: the keyed Decide answers degraded in time and keeps nothing, so
    the retry, once Redis is back, decides (and keeps) a real answer."""
    arbiter = Arbiter(load_text(CAPPED), _redis(redis_url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    request = pb.DecideRequest(user_id="eve", placement="mail", request_id="d1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            client = redis.Redis.from_url(redis_url)
            client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            started = time.monotonic()
            degraded = stub.Decide(request, timeout=1)
            assert degraded.degraded and time.monotonic() - started < 1
            time.sleep(1.6)
            retried = stub.Decide(request, timeout=2)
            assert not retried.degraded and not retried.duplicate
            assert retried.decision_id != degraded.decision_id
            assert stub.Decide(request, timeout=2).duplicate
            client.close()
    finally:
        running.stop(grace=0.2)


class _LostAnswer(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"


def test_the_cli_sends_a_call_whose_answer_was_lost_again_and_counts_each_send_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``arbiter decide --batch --record-impressions``: the first call is decided and its
    sends recorded, but its answer never reaches the client (DEADLINE_EXCEEDED). The
    command sends it again under the same request ids and writes the first answers:
    with the promotion capped at 2, promo, promo, digest (deciding again would have
    written three digests, the cap used up by the lost call)."""
    import engine.grpc.gen.arbiter.v1.decision_pb2_grpc as generated

    real_stub = generated.DecisionServiceStub
    calls: list[int] = []

    class LosesTheFirstAnswer:
        def __init__(self, channel: grpc.Channel) -> None:
            self.stub = real_stub(channel)

        def DecideBatch(self, request: pb.DecideBatchRequest, timeout: float
                        ) -> pb.DecideBatchResponse:
            answer = self.stub.DecideBatch(request, timeout=timeout)
            calls.append(len(request.requests))
            if len(calls) == 1:
                raise _LostAnswer()
            return answer

    monkeypatch.setattr(generated, "DecisionServiceStub", LosesTheFirstAnswer)
    arbiter = Arbiter(load_text(CAPPED), MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0)
    users, out = tmp_path / "users.jsonl", tmp_path / "out.jsonl"
    users.write_text('{"user_id": "ann"}\n' * 3)
    try:
        assert main(["decide", "--target", f"127.0.0.1:{running.port}", "--batch",
                     str(users), "--placement", "mail", "--out", str(out),
                     "--record-impressions"]) == 0
    finally:
        running.stop(grace=0.2)
    assert calls == [3, 3]
    shown = [json.loads(line)["actions"][0]["action_id"]
             for line in out.read_text().splitlines()]
    assert shown == ["promo", "promo", "digest"]


def test_a_batch_impression_guessed_from_what_was_just_stored_is_exact_even_when_stale(
        redis_url: str) -> None:
    """DecideBatch's impressions take the record just stored and the cached profile for
    what they would read (one script, no reads: counted by Redis). A stale guess (the
    profile changed meanwhile, by another replica) fails the compare-and-set; the
    feedback then reads and applies once; a second impression is a duplicate."""
    from adapters.redis_feedback import feedback_steps, run_sync
    from engine.decide.contacts import contact_entries
    from engine.feedback import feedback_effects
    from engine.records import decode_profile

    store = RedisStore(redis_url, cache_ttl=30)
    arbiter = Arbiter(load_text(CAPPED), store, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    client = redis.Redis.from_url(redis_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            client.config_resetstat()
            requests = [pb.DecideRequest(user_id=f"g{i}", placement="mail") for i in range(40)]
            stub.DecideBatch(pb.DecideBatchRequest(requests=requests, record_impressions=True))
            stats = client.info("commandstats")
            # 40 impressions and the records; one more: the first record of a names list
            # new to this process spells its names out, so its guess fails once and reads
            assert stats["cmdstat_eval"]["calls"] <= 42
            assert stats["cmdstat_mget"]["calls"] <= 3  # the profiles, read once
            assert _send(stub, "s1").decision.actions[0].action_id == "promo"
            assert _send(stub, "s2").decision.actions[0].action_id == "promo"
            assert _send(stub, "s3").decision.actions[0].action_id == "digest"  # capped
    finally:
        running.stop(grace=0.2)
    decision = arbiter.decide(user_id="hal", placement="mail")
    record = store.get_decision(decision.decision_id)
    arbiter.track(user_id="hal", event_type="visit")  # the profile moves on meanwhile
    assert record is not None
    fb = arbiter.feedback_input(decision_id=decision.decision_id, action_id="promo",
                                outcome="impression")

    def impression(guess: tuple[bytes, object, bytes | None] | None) -> bool:
        steps = feedback_steps(store, fb.decision_id, fb.key,
                               lambda d, p: feedback_effects(fb, d, p), 3600.0,
                               fb.fingerprint, guess)  # type: ignore[arg-type]
        return run_sync(steps, store.redis, store._commit_feedback).duplicate

    assert impression((store.record_bytes(record), record, None)) is False  # stale: read
    assert impression((store.record_bytes(record), record, None)) is True
    stored = client.get(store.key("p", "hal"))
    assert stored is not None
    profile = decode_profile(stored)  # the event kept, the impression counted once
    assert profile.events
    assert [o for _, o, _ in contact_entries(profile.contacts["promo"])] == ["impression"]


def test_the_cli_decides_under_a_request_id_and_counts_answers_given_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``arbiter decide --target --request-id``: the same decision twice; the metric of
    answers given again is scraped over HTTP; without --target the flag is refused."""
    import urllib.request

    arbiter = Arbiter(load_text(CAPPED), MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, metrics_port=0)
    args = ["decide", "--target", f"127.0.0.1:{running.port}", "--user", "ann",
            "--placement", "mail", "--request-id", "cli-1", "--json"]
    try:
        assert main(args) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(args) == 0
        out, err = capsys.readouterr()
        again = json.loads(out)
        assert "kept for request_id cli-1, given again" in err
        assert again["decisionId"] == first["decisionId"]
        port = running.metrics_port
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        running.stop(grace=0.2)
    assert "arbiter_decisions_answered_again_total 1.0" in scraped
    assert main(["decide", "--user", "ann", "--placement", "mail", "--request-id", "x"]) == 2
    assert "--request-id needs --target" in capsys.readouterr().err


def test_a_keyed_batch_with_redis_killed_keeps_nothing_and_decides_once_it_is_back(
        redis_server: RedisServer, redis_url: str) -> None:
    """Redis killed: a keyed DecideBatch answers every request degraded, in time, and
    keeps nothing; restarted (its data kept: appendfsync always), the same batch decides,
    keeps its answers, and a third send gets them again."""
    arbiter = Arbiter(load_text(CAPPED), _redis(redis_url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    batch = pb.DecideBatchRequest(record_impressions=True, requests=[
        pb.DecideRequest(user_id=f"k{i}", placement="mail", request_id="kill-1")
        for i in range(20)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            redis_server.kill()
            started = time.monotonic()
            down = stub.DecideBatch(batch, timeout=3)
            assert time.monotonic() - started < 3
            assert all(r.decision.degraded and not r.error for r in down.results)
            redis_server.start()
            back = stub.DecideBatch(batch, timeout=5)
            assert not any(r.decision.degraded or r.decision.duplicate or r.error
                           for r in back.results)
            again = stub.DecideBatch(batch, timeout=5)
            assert all(r.decision.duplicate for r in again.results)
            assert ([r.decision.decision_id for r in again.results]
                    == [r.decision.decision_id for r in back.results])
    finally:
        running.stop(grace=0.2)


QUIET = """
placement quiet { channels: web }
action never { placements: quiet  value: 1  when: false }
"""


@pytest.mark.parametrize("store_name", sorted(STORES))
def test_an_answer_that_recorded_nothing_is_not_kept_and_its_id_is_free_at_once(
        store_name: str, request: pytest.FixtureRequest) -> None:
    """A decision with no action records nothing, so nothing is kept: the claim is
    dropped before the answer goes out, and the same request at once decides again
    (never ABORTED by its own lingering claim)."""
    url = request.getfixturevalue("redis_url") if store_name == "redis" else ""
    arbiter = Arbiter(load_text(QUIET), STORES[store_name](url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    one = pb.DecideRequest(user_id="ivy", placement="quiet", request_id="q1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            answers = [stub.Decide(one, timeout=2) for _ in range(30)]
            batch = stub.DecideBatch(pb.DecideBatchRequest(requests=[one] * 5), timeout=2)
    finally:
        running.stop(grace=0.2)
    assert not any(a.actions or a.duplicate for a in answers)
    assert len({a.decision_id for a in answers}) == 30
    assert not any(r.error for r in batch.results)


def test_a_damaged_kept_answer_is_data_loss_naming_the_id_and_forget_heals_it(
        redis_url: str) -> None:
    """What is kept under an id, damaged in Redis (an unknown kind, a cut digest): the
    Decide is DATA_LOSS naming request_id (a batch item alone, with its status), the
    server stays up, and ForgetProfile removes it, after which the id decides again."""
    store = _redis(redis_url)
    arbiter = Arbiter(load_text(CAPPED), store, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    client = redis.Redis.from_url(redis_url)
    request = pb.DecideRequest(user_id="zed", placement="mail", request_id="z1")
    key = store.key("k", answer_key("zed", "z1"))  # type: ignore[attr-defined]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            first = stub.Decide(request, timeout=2)
            for damaged in (b"X" + client.get(key)[1:], client.get(key)[:9]):
                client.set(key, damaged, keepttl=True)
                with pytest.raises(grpc.RpcError) as err:
                    stub.Decide(request, timeout=2)
                assert err.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
                assert err.value.details().startswith("request_id: ")  # type: ignore[attr-defined]
                batch = stub.DecideBatch(pb.DecideBatchRequest(requests=[request]), timeout=2)
                assert batch.results[0].status == "DATA_LOSS"
            assert stub.ForgetProfile(pb.ForgetProfileRequest(user_id="zed"), timeout=5)
            again = stub.Decide(request, timeout=2)
            assert not again.duplicate and again.decision_id != first.decision_id
    finally:
        running.stop(grace=0.2)
        client.close()


def test_a_keyed_send_whose_write_reply_was_lost_is_counted_once(redis_url: str) -> None:
    """The writes of a keyed recorded decision (its record with its impression, its kept
    answer) reach Redis but their reply comes too late (here: the answer's write is
    made to fail after it is done): the call answers degraded. The claim must not be
    dropped then (that would erase the kept answer): the retry gets the answer that was
    written, and the send counts once, not twice."""
    from engine.ports import StoreUnavailable

    arbiter = Arbiter(load_text(CAPPED), _redis(redis_url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, default_deadline=2.0)
    batch = pb.DecideBatchRequest(record_impressions=True, requests=[
        pb.DecideRequest(user_id="wes", placement="mail", request_id="w1")])
    io = running.decide_io
    real = io.save_answers

    def late(answers: Any, timeout: float) -> Any:
        sent = real(answers, timeout)  # queued now: it is written

        async def lost() -> None:
            await sent
            raise StoreUnavailable("redis: the reply came too late (test)")
        return lost()

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            io.save_answers = late  # type: ignore[method-assign]
            first = stub.DecideBatch(batch, timeout=2).results[0]
            assert first.decision.degraded and not first.error
            io.save_answers = real  # type: ignore[method-assign]
            retry = stub.DecideBatch(batch, timeout=2).results[0]
            assert retry.decision.duplicate and not retry.error
            assert retry.decision.decision_id == first.decision.decision_id
    finally:
        running.stop(grace=0.2)
    profile = arbiter.store.get_profile("wes")
    assert profile is not None
    assert sum(len(contact_entries(h)) for h in profile.contacts.values()) == 1
