"""DecideBatch and `arbiter decide --batch`: many decisions per call, errors per item,
sends recorded so that caps apply to the next decision."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from engine.cli import main
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter


def test_a_batch_decides_each_request_and_refuses_only_the_bad_ones(
        stub: pb_grpc.DecisionServiceStub) -> None:
    requests = [pb.DecideRequest(user_id=f"u{i}", placement="homepage_banner", channel="web")
                for i in range(50)]
    requests.insert(7, pb.DecideRequest(user_id="bad", placement="nowhere"))
    response = stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    assert len(response.results) == 51
    assert response.results[7].error.startswith("placement: unknown placement")
    assert all(r.decision.actions for i, r in enumerate(response.results) if i != 7)
    with pytest.raises(grpc.RpcError) as err:
        stub.DecideBatch(pb.DecideBatchRequest(requests=[requests[0]] * 1001))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


CAPPED = """
placement mail { channels: email  fallback: digest }
action promo { placements: mail  value: 10  cap: 2 per 7d }
action digest { placements: mail  value: 1  when: false }
"""


def test_recorded_sends_count_against_caps() -> None:
    """A promotion capped at 2 per week, decided 4 times in one batch for one customer:
    with the sends recorded, the third and fourth decisions respect the cap."""
    arbiter = Arbiter(load_text(CAPPED), MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            one = pb.DecideRequest(user_id="ann", placement="mail")
            response = stub.DecideBatch(pb.DecideBatchRequest(requests=[one] * 4,
                                                              record_impressions=True))
    finally:
        running.stop(grace=0.2)
    shown = [r.decision.actions[0].action_id for r in response.results]
    assert shown == ["promo", "promo", "digest", "digest"]


def test_the_cli_decides_a_file_of_users(running: server.RunningServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(1200)))
    out = tmp_path / "decisions.jsonl"
    assert main(["decide", "--target", f"127.0.0.1:{running.port}", "--batch", str(users),
                 "--placement", "homepage_banner", "--channel", "web", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1200 and all(line["actions"] for line in lines)
    assert "decided 1,200/1,200" in capsys.readouterr().err


def test_the_cli_keeps_each_call_under_the_servers_message_limit(
        running: server.RunningServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Lines with 3 KB of context: 500 of them are 1.5 MB, past the 1 MiB a server takes
    (the call was refused RESOURCE_EXHAUSTED, sent again until the run stopped). Now
    each call is cut under the limit."""
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}", "context": {"page": "p" * 3000}})
                             + "\n" for i in range(600)))
    out = tmp_path / "decisions.jsonl"
    assert main(["decide", "--target", f"127.0.0.1:{running.port}", "--batch", str(users),
                 "--placement", "homepage_banner", "--channel", "web", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == [f"c{i}" for i in range(600)]
    assert all(line["actions"] for line in lines)
    err = capsys.readouterr().err
    assert "decided 600/600" in err and "decided 500/600" not in err  # (smaller calls)



def test_the_cli_refuses_an_out_it_cannot_write_in_one_line(
        running: server.RunningServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--out`` a folder, or in a folder that does not exist: a traceback before."""
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": "ann"}\n')
    for out, why in ((tmp_path, "Is a directory"), (tmp_path / "nope" / "d.jsonl",
                                                     "No such file or directory")):
        assert main(["decide", "--target", f"127.0.0.1:{running.port}", "--batch",
                     str(users), "--placement", "email", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"arbiter decide: --out {out}: {why}\n"

def test_the_cli_refuses_a_bad_line_before_deciding_anything(
        running: server.RunningServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.jsonl"
    good = "".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(700))
    users.write_text(good + '{"user_id": "c700", "context": {"device": "web"}}\n["c701"]\n')
    out = tmp_path / "decisions.jsonl"
    args = ["decide", "--target", f"127.0.0.1:{running.port}", "--batch", str(users),
            "--placement", "homepage_banner", "--channel", "web", "--out", str(out)]
    assert main(args) == 2
    assert f"{users}:702:1: not a JSON object" in capsys.readouterr().err
    assert not out.exists()  # nothing decided, nothing recorded
    users.write_text(good + '{"user_id": "c700", "context": ["web"]}\n')
    assert main(args) == 2
    assert f"{users}:701:21: context: not a JSON object" in capsys.readouterr().err
    # a key the batch does not read is refused, never silently ignored
    users.write_text(good + '{"user_id": "c700", "placement": "email"}\n')
    assert main(args) == 2
    assert f"{users}:701:21: placement: not read;" in capsys.readouterr().err
    for line, column in (('{"user_id": 700}', 2), ('{"user_id": ""}', 2),
                         ('{"context": {}}', 1)):
        users.write_text(good + line + "\n")
        assert main(args) == 2
        assert (f"{users}:701:{column}: user_id: must be a non-empty string"
                in capsys.readouterr().err)
    assert not out.exists()


def test_an_old_decision_in_a_recorded_batch_is_answered_with_a_note_not_a_failed_batch(
        stub: pb_grpc.DecisionServiceStub) -> None:
    """Found by the API fuzzer: one request decided for a time past the attribution
    window could not have its impression recorded, and failed the whole batch NOT_FOUND."""
    import time

    from engine.grpc import convert

    old = pb.DecideRequest(user_id="u", placement="homepage_banner", channel="web",
                           at=convert.timestamp(time.time() - 8 * 86400))
    fresh = pb.DecideRequest(user_id="v", placement="homepage_banner", channel="web")
    response = stub.DecideBatch(pb.DecideBatchRequest(requests=[old, fresh],
                                                      record_impressions=True), timeout=10)
    assert response.results[0].decision.actions
    assert response.results[0].error.startswith("at: decided, but older than")
    assert response.results[1].decision.actions and not response.results[1].error


def test_arbiter_track_loads_a_file_once_however_often_it_is_run(
        running: server.RunningServer, arbiter: Arbiter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``arbiter track FILE``: every line a TrackEvent (traits, past timestamps, items), a
    refused line named FILE:LINE while the rest goes on; run again, nothing counts twice
    (each line's event_id is the file's digest and its number); a malformed file is
    refused whole before anything is sent."""
    events = tmp_path / "crm.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in [
        {"user_id": "ann", "event_type": "purchase", "properties": {"value": 40},
         "timestamp": "2026-11-01T09:30:00Z", "item_id": "sku-1"},
        {"user_id": "ann", "event_type": "visit",
         "traits": {"first_name": "Ann", "email_opt_in": True}},
        {"user_id": "bob", "event_type": "visit", "event_id": "bob-visit-1"},
        {"user_id": "carl", "event_type": "nonsense"},
        {"user_id": "ann", "event_type": "purchase", "properties": {"value": 60},
         "timestamp": 1_793_000_000},
        {"user_id": "ann", "event_type": "visit", "traits": {"first_name": "Anne"}},
        {"user_id": "ann", "event_type": "visit", "traits": {"email_opt_in": None}},
    ]) + "\n")
    target = ["--target", f"127.0.0.1:{running.port}"]
    assert main(["track", str(events), *target, "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert f"{events}:4: INVALID_ARGUMENT: event_type" in err
    assert "6 applied, 0 already applied, 1 refused" in err
    ann = arbiter.get_profile("ann")  # a customer's lines applied in file order
    assert ann is not None and ann.attributes["first_name"] == "Anne"
    assert "email_opt_in" not in ann.attributes  # a trait's null removes it
    assert ann.events["purchase"].count == 2 and ann.events["purchase"].total == 100.0
    assert (ann.events["purchase"].first_at, ann.events["purchase"].last_at) == (
        1_793_000_000.0, 1_793_525_400.0)  # (2026-11-01T09:30:00Z)
    assert main(["track", str(events), *target]) == 1
    assert "0 applied, 6 already applied, 1 refused" in capsys.readouterr().err
    assert arbiter.get_profile("ann").events["purchase"].count == 2  # type: ignore[union-attr]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_id": "dan", "event_type": "visit"}\n'
                      '{"user_id": "dan", "event_type": "visit", "properties": {"v": null}}\n')
    assert main(["track", str(broken), *target]) == 2
    assert f"{broken}:2:" in capsys.readouterr().err and arbiter.get_profile("dan") is None
    for when in ("NaN", "Infinity", "1e300", '"yesterday"', "true"):
        broken.write_text('{"user_id": "dan", "event_type": "visit", "timestamp": '
                          f"{when}}}\n")
        assert main(["track", str(broken), *target]) == 2
        assert f"{broken}:1:43: timestamp: must be" in capsys.readouterr().err
    assert arbiter.get_profile("dan") is None


def test_arbiter_track_sends_what_failed_for_a_transient_reason_again() -> None:
    """A call answered UNAVAILABLE is sent again whole, an event answered UNAVAILABLE
    alone (the same requests: their event_ids make that safe), until answered or out of
    retries; then the run stops there, and against a server that is not there at all it
    stops at once, saying so."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from engine.cli.commands.track import Stopped, Tally, send_chunk
    from tests.conftest import free_port

    class Down(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    def ok(duplicate: bool = False) -> SimpleNamespace:
        return SimpleNamespace(status="", error="", duplicate=duplicate)

    down = SimpleNamespace(status="UNAVAILABLE", error="profile store unavailable; retry",
                           duplicate=False)
    refused = SimpleNamespace(status="INVALID_ARGUMENT", error="event_type: ...",
                              duplicate=False)
    lines = [(n, pb.TrackEventRequest(user_id="ann", event_type="visit", event_id=f"f:{n}"))
             for n in (1, 2, 3)]
    sent: list[list[str]] = []

    def stub_with(*answers: object) -> SimpleNamespace:
        replies = iter(answers)

        def call(request: pb.TrackEventBatchRequest, timeout: float) -> object:
            sent.append([e.event_id for e in request.events])
            reply = next(replies)
            if isinstance(reply, Exception):
                raise reply
            return SimpleNamespace(results=reply)
        return SimpleNamespace(TrackEventBatch=call)

    tally = Tally()
    send_chunk(stub_with(Down(), [ok(), down, refused], [ok(True)]), lines, 2,
               Path("f.jsonl"), tally)
    assert sent == [["f:1", "f:2", "f:3"], ["f:1", "f:2", "f:3"], ["f:2"]]
    assert (tally.applied, tally.duplicates) == (1, 1)
    assert tally.refused == ["f.jsonl:3: INVALID_ARGUMENT: event_type: ..."]
    with pytest.raises(Stopped, match=r"f\.jsonl:2: UNAVAILABLE: profile store "
                                      r"unavailable; retry \(after 2 attempts\)"):
        send_chunk(stub_with([ok(), down, ok()], [down]), lines, 1, Path("f.jsonl"), Tally())
    events = Path(tempfile.mkdtemp()) / "e.jsonl"
    events.write_text('{"user_id": "ann", "event_type": "visit"}\n' * 3)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "engine.cli", "track", str(events), "--target",
                          f"127.0.0.1:{free_port()}", "--retries", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and time.monotonic() - started < 30
    assert f"stopped at {events}:1: UNAVAILABLE" in out.stderr
    assert "(after 2 attempts)" in out.stderr and "Traceback" not in out.stderr


def test_a_batch_that_stopped_goes_on_with_resume(
        running: server.RunningServer, arbiter: Arbiter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign run killed half way (its last line cut short) is resumed from the first
    user without a complete decision in --out: nobody decided twice, nobody skipped;
    against a server that is not there it stops without a traceback, saying how to go
    on, and what it wrote is kept."""
    import engine.cli.commands.decide as decide
    from tests.conftest import free_port

    monkeypatch.setattr(decide, "BATCH", 3)
    monkeypatch.setattr(decide, "BATCH_RETRIES", 1)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(10)))
    out = tmp_path / "decisions.jsonl"
    args = ["decide", "--batch", str(users), "--placement", "homepage_banner",
            "--channel", "web", "--out", str(out), "--resume"]
    assert main([*args, "--target", f"127.0.0.1:{running.port}"]) == 0
    first = out.read_text().splitlines()
    assert [json.loads(line)["user_id"] for line in first] == [f"c{i}" for i in range(10)]
    out.write_text("\n".join(first[:4]) + "\n" + first[4][:9])  # killed while writing c4
    decided = len(arbiter.store._decisions)  # type: ignore[attr-defined]
    assert main([*args, "--target", f"127.0.0.1:{running.port}"]) == 0
    again = out.read_text().splitlines()
    assert again[:4] == first[:4] and len(again) == 10
    assert [json.loads(line)["user_id"] for line in again] == [f"c{i}" for i in range(10)]
    assert len(arbiter.store._decisions) == decided + 6  # type: ignore[attr-defined]
    out.write_text("\n".join(first[:4]) + "\n")
    capsys.readouterr()
    assert main([*args, "--target", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "stopped after 4 of 10 users: UNAVAILABLE" in err and "--resume" in err
    assert "Traceback" not in err and out.read_text().splitlines() == first[:4]


def test_arbiter_track_keeps_each_call_under_the_request_limit() -> None:
    """Lines are sent in calls of at most --batch-size events and under 1 MiB (a server
    refuses a larger request): big traits make smaller calls."""
    from engine.cli.common import CALL_BYTES, calls

    big = {f"t{i}": pb.Value(string_value="x" * 4000) for i in range(60)}  # ~240 KB
    lines = [(n, pb.TrackEventRequest(user_id="ann", event_type="visit", traits=big))
             for n in range(1, 11)]
    chunks = list(calls(iter(lines), 500))
    assert [n for chunk in chunks for n, _ in chunk] == list(range(1, 11))
    assert len(chunks) == 4 and all(
        sum(r.ByteSize() for _, r in chunk) <= CALL_BYTES for chunk in chunks)
    small = [(n, pb.TrackEventRequest(user_id="ann", event_type="visit")) for n in range(7)]
    assert [len(c) for c in calls(iter(small), 3)] == [3, 3, 1]


EXPERIMENT = """
placement hero { channels: web }
action a { placements: hero  value: 1 }
action b { placements: hero  value: 1 }
experiment t on hero {
  arms: a, b
  allocate: thompson(prior = beta(1, 1))
  reward: click
}
"""


def test_a_recorded_batch_in_an_experiment_rereads_its_counters_a_few_times_not_each(
        redis_url: str) -> None:
    """Each impression moves the experiment's trials; the server re-reads the counters
    once per interval, not once per impression (a thread and an HGETALL each), and every
    trial is counted."""
    import redis

    from adapters.redis_store import RedisStore

    arbiter = Arbiter(load_text(EXPERIMENT), RedisStore(redis_url), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0)
    client = redis.Redis.from_url(redis_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            client.config_resetstat()
            started = time.monotonic()
            requests = [pb.DecideRequest(user_id=f"e{i}", placement="hero") for i in range(600)]
            response = stub.DecideBatch(pb.DecideBatchRequest(requests=requests,
                                                              record_impressions=True))
            elapsed = time.monotonic() - started
            reads = client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    finally:
        running.stop(grace=0.2)
    assert all(r.decision.actions[0].arm for r in response.results)
    assert reads <= elapsed / 0.05 + 5 and reads < 100  # (600 before)
    trials = sum(c.trials for c in arbiter.store.arm_counts("t").values())
    assert trials == 600


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_send_decided_a_few_minutes_ahead_is_counted_at_its_decision_time(
        store: str, request: pytest.FixtureRequest) -> None:
    """Decide takes an ``at`` up to five minutes ahead; its recorded impression was
    stamped with the time of the call, before the decision, and the whole batch failed
    INVALID_ARGUMENT. Now the send is counted at the decision's time, and the cap holds
    the next one."""
    from adapters.redis_store import RedisStore
    from engine.decide.contacts import contact_entries
    from engine.grpc import convert

    backing = (MemoryStore() if store == "memory"
               else RedisStore(request.getfixturevalue("redis_url")))
    arbiter = Arbiter(load_text(CAPPED), backing, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=2)
    ahead = time.time() + 120
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            one = pb.DecideRequest(user_id="ann", placement="mail",
                                   at=convert.timestamp(ahead))
            response = stub.DecideBatch(pb.DecideBatchRequest(requests=[one] * 3,
                                                              record_impressions=True))
    finally:
        running.stop(grace=0.2)
    assert [r.decision.actions[0].action_id for r in response.results] == [
        "promo", "promo", "digest"]
    assert not any(r.error for r in response.results)
    profile = arbiter.store.get_profile("ann")
    assert profile is not None
    assert [round(t) for t, _, _ in contact_entries(profile.contacts["promo"])] == [
        round(ahead)] * 2


class _Context:
    """What the RPC wrapper asks of a gRPC context when nothing fails."""

    def time_remaining(self) -> float:
        return 30.0


@pytest.mark.parametrize("rpc,store", [("DecideBatch", "memory"), ("TrackEventBatch", "memory"),
                                       ("DecideBatch", "redis")])
def test_a_batch_hands_the_loop_back_while_it_runs(rpc: str, store: str,
                                                   request: pytest.FixtureRequest) -> None:
    """With the in-memory store a batch's work all runs on the loop, and with Redis a
    wave's decisions do: without handing it back, a Decide arriving while a batch of
    1,000 ran waited for all of it (~20-50 ms). A task watching the loop while the
    batch runs sees it part done."""
    import asyncio

    from adapters.redis_store import RedisStore
    from engine.grpc.decision_service import DecisionServicer
    from engine.grpc.offload import Offload

    backing = (MemoryStore() if store == "memory"
               else RedisStore(request.getfixturevalue("redis_url")))
    arbiter = Arbiter(load_text(CAPPED), backing, seed=1)
    offload = Offload(arbiter.store.blocking, 1)
    servicer = DecisionServicer(arbiter, offload, arbiter.store.decide_io())
    done = [0]
    name = ("track_stored" if rpc == "TrackEventBatch"
            else "decide" if store == "memory" else "decide_from")
    work = getattr(arbiter, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        done[0] += 1
        return work(*args, **kwargs)

    setattr(arbiter, name, counted)  # (the instance's, for this test only)
    if rpc == "DecideBatch":
        batch: Any = pb.DecideBatchRequest(requests=[
            pb.DecideRequest(user_id=f"u{i}", placement="mail") for i in range(1000)])
    else:
        batch = pb.TrackEventBatchRequest(events=[
            pb.TrackEventRequest(user_id=f"u{i}", event_type="visit") for i in range(1000)])
    async def run() -> list[int]:
        task = asyncio.ensure_future(getattr(servicer, rpc)(batch, _Context()))
        seen = []
        while not task.done():
            seen.append(done[0])
            await asyncio.sleep(0)
        assert len((await task).results) == 1000
        return seen

    try:
        seen = asyncio.run(run())
    finally:
        offload.close()
        arbiter.close()
    assert done[0] == 1000
    assert any(0 < n < 1000 for n in seen), seen  # the loop ran while the batch did


LONG = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 80  # ~4.6 KB
NEWSLETTER = f"""
profile {{ first_name: string }}
placement mail {{ channels: email  slots: 2 }}
action letter {{
  placements: mail
  value: 2
  content {{ body: html "<p>Dear {{{{ profile.first_name | default(\\"friend\\") }}}}</p>{LONG}" }}
}}
action offer {{
  placements: mail
  value: 1
  content {{ body: html "<p>For {{{{ profile.first_name | default(\\"you\\") }}}}</p>{LONG}" }}
}}
"""


@pytest.mark.parametrize("store,ids", [("memory", False), ("memory", True), ("redis", False),
                                       ("redis", True)])
def test_a_batch_answer_stays_under_the_message_limit_and_says_what_to_send_again(
        store: str, ids: bool, request: pytest.FixtureRequest) -> None:
    """1,000 emails of ~9 KB are ~9 MB, past the 4 MiB a gRPC client receives (and the
    server sent): the call failed RESOURCE_EXHAUSTED after the sends were recorded. Now
    the answer stops at about 3 MiB; the requests after it are RESOURCE_EXHAUSTED with
    nothing decided or recorded for them (a request id's claim dropped), and sent again
    they are decided."""
    from adapters.redis_store import RedisStore

    backing = (MemoryStore() if store == "memory"
               else RedisStore(request.getfixturevalue("redis_url")))
    arbiter = Arbiter(load_text(NEWSLETTER), backing, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=2)
    requests = [pb.DecideRequest(user_id=f"n{i}", placement="mail",
                                 request_id=f"run:{i}" if ids else "") for i in range(1000)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:  # defaults
            stub = pb_grpc.DecisionServiceStub(channel)
            first = stub.DecideBatch(pb.DecideBatchRequest(requests=requests,
                                                           record_impressions=True))
            cut = [i for i, r in enumerate(first.results) if r.status]
            decided = len(first.results) - len(cut)
            assert decided > 100 and cut == list(range(decided, 1000))
            assert first.ByteSize() < 4 << 20 and all(
                first.results[i].status == "RESOURCE_EXHAUSTED"
                and not first.results[i].HasField("decision") for i in cut)
            assert "send the request again" in first.results[cut[0]].error
            for i in (cut[0], cut[-1]):  # nothing recorded for them
                assert arbiter.store.get_profile(f"n{i}") is None
            assert arbiter.store.get_profile("n0") is not None  # (the send, recorded)
            again = stub.DecideBatch(pb.DecideBatchRequest(
                requests=[requests[i] for i in cut[:100]], record_impressions=True))
    finally:
        running.stop(grace=0.2)
    assert not any(r.status for r in again.results)
    assert all(r.decision.actions for r in again.results)
    profile = arbiter.store.get_profile(f"n{cut[0]}")
    assert profile is not None and len(profile.contacts) == 1


def test_the_cli_sends_again_what_an_answer_had_no_room_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A campaign of large emails through ``arbiter decide --batch``: every customer
    decided and sent once, each call's answer under the message limit."""
    from engine.decide.contacts import contact_entries

    arbiter = Arbiter(load_text(NEWSLETTER), MemoryStore(), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0, workers=2)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(1200)))
    out = tmp_path / "decisions.jsonl"
    try:
        assert main(["decide", "--target", f"127.0.0.1:{running.port}", "--batch", str(users),
                     "--placement", "mail", "--out", str(out), "--record-impressions"]) == 0
    finally:
        running.stop(grace=0.2)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == [f"c{i}" for i in range(1200)]
    assert all(line["actions"] and "error" not in line for line in lines)
    for line in lines:  # each sent once: its first action's one impression
        profile = arbiter.store.get_profile(line["user_id"])
        assert profile is not None and list(profile.contacts) == [
            line["actions"][0]["action_id"]]
        assert [kind for _, kind, _ in contact_entries(
            profile.contacts[line["actions"][0]["action_id"]])] == ["impression"]
    assert "decided 1,200/1,200" in capsys.readouterr().err


def test_a_list_or_map_in_a_file_holds_strings_or_is_refused_at_its_line(
        running: server.RunningServer, arbiter: Arbiter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A CRM export's `"consents": ["email_marketing", null]` was sent as the purpose
    "None", `[true]` as "True" and `{"newsletter": false}` as "False" (Python's spelling,
    not JSON's), by `arbiter track`, `arbiter decide --batch` and `arbiter items upsert`:
    values no rule would ever match, stored without a word."""
    target = ["--target", f"127.0.0.1:{running.port}"]
    events = tmp_path / "crm.jsonl"
    for bad, message in (
            ('["email_marketing", null]', "a list's items are strings, not null"),
            ("[true]", "a list's items are strings, not true"),
            ('{"newsletter": false}', "a map's values are strings, not false (newsletter)")):
        events.write_text('{"user_id": "ann", "event_type": "visit"}\n'
                          '{"user_id": "ann", "event_type": "visit", "traits": '
                          f'{{"consents": {bad}}}}}\n')
        assert main(["track", str(events), *target]) == 2
        assert f"{events}:2:54: traits.consents: {message}" in capsys.readouterr().err
        assert arbiter.get_profile("ann") is None  # refused whole, nothing sent
    events.write_text('{"user_id": "ann", "event_type": "visit", "traits": '
                      '{"consents": ["email_marketing"]}}\n')
    assert main(["track", str(events), *target]) == 0
    assert arbiter.get_profile("ann").attributes["consents"] == [  # type: ignore[union-attr]
        "email_marketing"]
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": "ann", "context": {"device": ["web", 2]}}\n')
    assert main(["decide", *target, "--batch", str(users), "--placement", "email",
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    assert (f"{users}:1:32: context.device: a list's items are strings, not 2"
            in capsys.readouterr().err)
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "sku-9", "name": "Scarf", "category": "accessories", '
                     '"price": 20, "tags": ["wool", 2026]}\n')
    assert main(["items", "upsert", str(items), *target]) == 1
    assert (f"{items}:1: a list's items are strings, not 2026"
            in capsys.readouterr().err)
    assert "sku-9" not in arbiter.catalogue.items
    # in process (the library, `arbiter explain --profile`): InvalidArgument, not a
    # TypeError from deep inside (a list holding a bool had no len())
    from engine.requests import InvalidArgument
    for bad in (["email_marketing", None], [True], [["nested"]]):
        with pytest.raises(InvalidArgument, match=r"traits\.consents: a list's items are strings"):
            arbiter.track(user_id="bob", event_type="visit", traits={"consents": bad})
    profile = tmp_path / "p.json"
    profile.write_text('{"traits": {"consents": [true]}}')
    assert main(["explain", "rulesets/retail", "--profile", str(profile),
                 "--placement", "email"]) == 2
    assert "traits.consents: a list's items are strings" in capsys.readouterr().err


def test_a_campaign_refused_for_its_flags_stops_and_one_with_refusals_says_so(
        running: server.RunningServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --channel for a placement with two, every user was refused alike: 600
    lines of "channel: is required" were written and the command exited 0, as for a
    campaign decided. Now it stops at the first answer, naming the flag (exit 2); and a
    run where some users were refused (an undeclared context key) ends by counting them
    (exit 1), its other users decided."""
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": f"c{i}"}) + "\n" for i in range(600)))
    out = tmp_path / "decisions.jsonl"
    args = ["decide", "--target", f"127.0.0.1:{running.port}", "--batch", str(users),
            "--placement", "homepage_banner", "--out", str(out)]
    assert main(args) == 2
    assert ("arbiter decide: --channel: is required for placement 'homepage_banner'"
            in capsys.readouterr().err)
    assert out.read_text() == ""
    users.write_text('{"user_id": "ann"}\n{"user_id": "bob", "context": {"devise": "ios"}}\n'
                     '{"user_id": "cy"}\n')
    assert main([*args, "--channel", "web"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 users refused" in err and "context.devise" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("decision_id" in line, "error" in line) for line in lines] == [
        (True, False), (False, True), (True, False)]


def test_a_send_scheduled_for_later_is_decided_for_its_time_from_the_cli(
        running: server.RunningServer, arbiter: Arbiter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`DecideRequest.at` (a campaign decided now for tomorrow's 09:00 send) had no flag:
    `arbiter decide --at TIME`, in process, from a server and for a --batch."""
    later = time.time() + 86400
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(later))
    target = ["--target", f"127.0.0.1:{running.port}"]
    for where in (["--rules", "rulesets/retail"], target):
        assert main(["decide", *where, "--user", "ann", "--placement", "email",
                     "--at", stamp, "--json"]) == 0
        decided = json.loads(capsys.readouterr().out)["decidedAt"]
        assert decided.startswith(stamp[:19]), decided
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": "bob"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["decide", *target, "--batch", str(users), "--placement", "homepage_banner",
                 "--channel", "web", "--out", str(out), "--at", str(int(later))]) == 0
    line = json.loads(out.read_text())  # (a new customer is shown the onboarding tour)
    record = arbiter.store.get_decision(line["decision_id"])
    assert record is not None and record.decided_at == int(later)
    for bad in ("noon", "nan", "1e300"):  # none sent: refused before the first call
        assert main(["decide", *target, "--batch", str(users), "--placement", "email",
                     "--out", str(out), "--at", bad]) == 2
        assert "at: must be an ISO 8601 date-time" in capsys.readouterr().err
