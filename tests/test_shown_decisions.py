"""DecideBatch's ``record_impressions`` on Redis: each record stored with its impression by
one script per wave (``SAVE_SHOWN_DECISIONS``), writing what the two-step path (the
record, then the impression's compare-and-set) writes; a customer whose profile changed
meanwhile is decided again on the profile as it is now (so caps hold when campaigns send
to one customer at once), and loses nothing."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
import redis

from adapters.redis_store import RedisStore
from dsl.loader import load_text
from engine.decide.contacts import contact_entries
from engine.grpc import decision_service, server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.service import Arbiter

RULES = """
profile {
  tier: string = "standard"
}
policy {
  channel email: at most 2 per 7d
}
placement mail { channels: email  fallback: digest }
action promo_a { placements: mail  value: 10 }
action promo_b { placements: mail  value: 10 }
action digest { placements: mail  value: 1  when: false }
experiment t on mail {
  arms: promo_a, promo_b
  allocate: thompson(prior = beta(1, 1))
  reward: click
}
"""


@contextmanager
def serving(redis_url: str, namespace: str, one_script: bool = True,
            metrics: list[str] | None = None
            ) -> Iterator[tuple[pb_grpc.DecisionServiceStub, Arbiter]]:
    """A server on its own namespace; ``one_script=False``: the two-step path;
    ``metrics``: its Prometheus page's address is appended there."""
    arbiter = Arbiter(load_text(RULES), RedisStore(redis_url, namespace=namespace), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0,
                           metrics_port=0 if metrics is not None else None)
    if metrics is not None:
        metrics.append(f"http://127.0.0.1:{running.metrics_port}/metrics")
    if not one_script:  # the servicer looks the method up: without it, two steps
        running.decide_io.save_shown_decisions = None  # type: ignore[attr-defined]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.DecisionServiceStub(channel), arbiter
    finally:
        running.stop(grace=0.2)


def _campaign(stub: pb_grpc.DecisionServiceStub, users: int) -> list[list[str]]:
    """Three sends per customer in one recorded batch: each customer's shown actions."""
    requests = [pb.DecideRequest(user_id=f"c{i}", placement="mail")
                for _ in range(3) for i in range(users)]
    response = stub.DecideBatch(pb.DecideBatchRequest(requests=requests,
                                                      record_impressions=True), timeout=30)
    assert not any(r.error for r in response.results)
    shown: list[list[str]] = [[] for _ in range(users)]
    for request, result in zip(requests, response.results, strict=True):
        assert not result.decision.degraded
        shown[int(request.user_id[1:])].append(result.decision.actions[0].action_id)
    return shown


def _at_once(count: int, work: Callable[[int], None]) -> None:
    """``work(0)`` ... ``work(count - 1)`` on threads let go at the same moment; raises
    what any of them raised."""
    start, failed = threading.Barrier(count), []

    def run(n: int) -> None:
        start.wait()
        try:
            work(n)
        except BaseException as err:  # (an assertion in a thread: raised by the test)
            failed.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]


def _stored(client: redis.Redis, arbiter: Arbiter, namespace: str) -> dict[str, Any]:
    """What a namespace holds, comparable across namespaces (decision ids aside)."""
    store = arbiter.store
    kinds: Counter[str] = Counter()
    without_ttl = []
    for key in client.scan_iter(f"{namespace}:*"):
        kind = key.decode().split(":")[1]
        kinds[kind] += 1
        if kind in ("d", "k", "udz", "ulz", "ukz") and client.ttl(key) <= 0:
            without_ttl.append(key)
    outcomes, contacts = Counter(), Counter()
    for key in client.scan_iter(f"{namespace}:d:*"):
        record = store.get_decision(key.decode().split(":", 2)[2])
        assert record is not None
        outcomes[(record.actions[0].action_id, tuple(record.outcomes[
            record.actions[0].action_id]))] += 1
    for key in client.scan_iter(f"{namespace}:p:*"):
        profile = store.get_profile(key.decode().split(":", 2)[2])
        assert profile is not None
        for action, history in profile.contacts.items():
            contacts[(action, tuple(kind for _, kind, _ in contact_entries(history)))] += 1
    return {"kinds": dict(kinds), "without_ttl": without_ttl, "outcomes": dict(outcomes),
            "contacts": dict(contacts), "log": client.xlen(f"{namespace}:learn"),
            "trials": sum(c.trials for c in store.arm_counts("t").values())}


def test_one_script_writes_what_the_two_steps_write(redis_url: str) -> None:
    """The same campaign through each path, on two namespaces of one Redis: the same
    keys of each kind, the same outcomes in the records, contacts in the profiles,
    learning-log entries and arm trials; every record, key and index with a TTL. And
    the caps count the sends: the third decision of each customer is the fallback."""
    client = redis.Redis.from_url(redis_url)
    found = {}
    for namespace, one_script in (("one", True), ("two", False)):
        with serving(redis_url, namespace, one_script) as (stub, arbiter):
            client.config_resetstat()
            shown = _campaign(stub, 40)
            evals = client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
            found[namespace] = _stored(client, arbiter, namespace)
            found[namespace]["evals"] = evals
        assert all(sends[2] == "digest" and "digest" not in sends[:2] for sends in shown)
    one, two = found["one"], found["two"]
    assert one["kinds"] == two["kinds"] and one["kinds"]["d"] == 120
    assert one["without_ttl"] == two["without_ttl"] == []
    assert sum(one["outcomes"].values()) == 120
    assert all(kinds == ("impression",) for _, kinds in one["outcomes"])
    assert one["outcomes"].keys() <= two["outcomes"].keys() | {
        ("promo_a", ("impression",)), ("promo_b", ("impression",))}
    for found_ in (one, two):  # every send a contact in its customer's profile
        assert sum(len(kinds) * n for (_, kinds), n in found_["contacts"].items()) == 120
    assert one["log"] == two["log"] == 120
    assert one["trials"] == two["trials"] == 80  # the arms' sends (not the fallback's)
    assert one["evals"] <= 8 < two["evals"]  # a script per wave, not one per impression


def test_a_profile_changed_since_it_was_read_is_decided_again_and_loses_nothing(
        redis_url: str) -> None:
    """Another replica changes a customer's profile after this server cached it: the
    one script does not store that record (its compare-and-set fails) and answers with
    the profile as it is now, on which the server decides again and stores that
    decision with its impression: the other replica's change kept, each send counted
    once, no impression committed as a Feedback."""
    client = redis.Redis.from_url(redis_url)
    other = Arbiter(load_text(RULES), RedisStore(redis_url, namespace="fb"), seed=2)
    with serving(redis_url, "fb") as (stub, arbiter):
        other.track(user_id="c0", event_type="visit", traits={"tier": "gold"})
        stub.Decide(pb.DecideRequest(user_id="c0", placement="mail"))  # cached here now
        other.track(user_id="c0", event_type="visit", traits={"tier": "platinum"})
        client.config_resetstat()
        shown = _campaign(stub, 2)
        stats = client.info("commandstats")
    profile = arbiter.store.get_profile("c0")
    assert profile is not None and profile.attributes["tier"] == "platinum"
    sends = [(a, tuple(k for _, k, _ in contact_entries(h)))
             for a, h in sorted(profile.contacts.items())]
    assert sum(len(kinds) for _, kinds in sends) == 3 == len(shown[0])
    assert shown[0][2] == "digest"  # the caps counted both earlier sends
    records = [arbiter.store.get_decision(k.decode().split(":", 2)[2])
               for k in client.scan_iter("fb:d:*")]
    assert len(records) == 7  # the first Decide's and six sends
    assert sum(r.outcomes == {r.actions[0].action_id: ["impression"]}
               for r in records if r is not None) == 6
    # three waves, and c0's first send once more: a script each, no Feedback's script
    assert stats["cmdstat_eval"]["calls"] == 4 and "cmdstat_evalsha" not in stats


@pytest.mark.parametrize("keyed", [False, True])
def test_a_send_whose_profile_keeps_changing_is_aborted_and_records_nothing(
        redis_url: str, keyed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the attempts run out (here after one), the send's result is ``ABORTED``
    (what ``arbiter decide --batch`` sends again) and nothing of it is stored; with a
    request id its claim is dropped, so the retry decides anew and is recorded."""
    monkeypatch.setattr(decision_service, "SHOWN_ATTEMPTS", 1)
    client = redis.Redis.from_url(redis_url)
    namespace = f"ab{int(keyed)}"
    other = Arbiter(load_text(RULES), RedisStore(redis_url, namespace=namespace), seed=2)
    request = pb.DecideRequest(user_id="c0", placement="mail",
                               request_id="send-1" if keyed else "")
    page: list[str] = []
    with serving(redis_url, namespace, metrics=page) as (stub, arbiter):
        stub.Decide(pb.DecideRequest(user_id="c0", placement="mail"))  # cached here now
        other.track(user_id="c0", event_type="visit", traits={"tier": "gold"})
        (result,) = stub.DecideBatch(pb.DecideBatchRequest(
            requests=[request], record_impressions=True), timeout=10).results
        assert (result.status, result.error) == ("ABORTED", decision_service.CONTENDED)
        assert not result.decision.decision_id and not result.decision.actions
        profile = arbiter.store.get_profile("c0")
        assert profile is not None and not profile.contacts
        assert len(list(client.scan_iter(f"{namespace}:d:*"))) == 1  # the Decide's
        (again,) = stub.DecideBatch(pb.DecideBatchRequest(
            requests=[request], record_impressions=True), timeout=10).results
        assert not again.error and again.decision.actions  # (its profile cached now)
        scraped = urllib.request.urlopen(page[0]).read().decode()
        assert 'arbiter_sends_contended_total{outcome="aborted"} 1.0' in scraped
    profile = arbiter.store.get_profile("c0")
    assert profile is not None and profile.attributes["tier"] == "gold"
    assert sum(len(contact_entries(h)) for h in profile.contacts.values()) == 1


@pytest.mark.parametrize("keyed", [False, True])
def test_replicas_sending_to_one_customer_keep_the_caps(redis_url: str,
                                                        keyed: bool) -> None:
    """Two campaigns on two replicas send to the same customer: one sends twice (the
    channel's cap) while the other holds the profile it cached before; the other's send
    is then decided again on the profile as it is now, so it is the fallback, not a
    third promotion. With request ids, the answer kept for the id is the one sent."""
    def send(stub: pb_grpc.DecisionServiceStub, tag: str) -> pb.DecideResponse:
        request = pb.DecideRequest(user_id="c0", placement="mail",
                                   request_id=tag if keyed else "")
        response = stub.DecideBatch(pb.DecideBatchRequest(
            requests=[request], record_impressions=True), timeout=10)
        (result,) = response.results
        assert not result.error and not result.decision.degraded
        return result.decision

    namespace = f"caps{int(keyed)}"
    page: list[str] = []
    with serving(redis_url, namespace, metrics=page) as (one, _), \
            serving(redis_url, namespace) as (two, _):
        one.Decide(pb.DecideRequest(user_id="c0", placement="mail"))  # cached by one
        assert [send(two, f"two-{n}").actions[0].action_id for n in range(2)] != [
            "digest"] * 2
        third = send(one, "one-0")
        assert [a.action_id for a in third.actions] == ["digest"]
        if keyed:  # the same request again: the answer kept, the send not counted twice
            assert send(one, "one-0").decision_id == third.decision_id
        scraped = urllib.request.urlopen(page[0]).read().decode()
        assert 'arbiter_sends_contended_total{outcome="again"} 1.0' in scraped
    profile = RedisStore(redis_url, namespace=namespace, cache_ttl=0).get_profile("c0")
    assert profile is not None
    kinds = {a: [k for _, k, _ in contact_entries(h)] for a, h in profile.contacts.items()}
    assert sum(len(v) for a, v in kinds.items() if a != "digest") == 2
    assert kinds["digest"] == ["impression"]


def test_in_memory_keyed_sends_are_stored_with_their_impressions_too() -> None:
    """In memory a batch with request ids (what ``arbiter decide --batch
    --record-impressions`` sends) goes by waves: each record is stored with its
    impression in one step there too, not stored and then given a Feedback."""
    from adapters.memory import MemoryStore

    store = MemoryStore()
    calls: Counter[str] = Counter()
    for name in ("save_shown_decision", "commit_feedback"):
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method,
                    **kwargs: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(store, name, counted)
    arbiter = Arbiter(load_text(RULES), store, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            requests = [pb.DecideRequest(user_id=f"m{i % 20}", placement="mail",
                                         request_id=f"r{i}") for i in range(60)]
            response = stub.DecideBatch(pb.DecideBatchRequest(requests=requests,
                                                              record_impressions=True))
    finally:
        running.stop(grace=0.2)
    assert not any(r.error or r.decision.degraded for r in response.results)
    assert calls == {"save_shown_decision": 60}
    profile = store.get_profile("m0")
    assert profile is not None
    assert sum(len(contact_entries(h)) for h in profile.contacts.values()) == 3


def test_triggers_at_the_same_moment_on_two_replicas_pass_the_cap_once_each(
        redis_url: str) -> None:
    """A triggered send is a recorded batch of one: twelve triggers for one customer at
    once, spread over two replicas, send the capped promotions exactly as often as the
    channel's cap allows (2), every other answer the fallback; the profile counts each
    answered send once."""
    answers: list[str] = []
    with serving(redis_url, "trig") as (one, _), serving(redis_url, "trig") as (two, _):
        for stub in (one, two):  # each replica has the customer's profile cached
            stub.Decide(pb.DecideRequest(user_id="c0", placement="mail"))

        def trigger(n: int) -> None:
            stub = (one, two)[n % 2]
            (result,) = stub.DecideBatch(pb.DecideBatchRequest(requests=[
                pb.DecideRequest(user_id="c0", placement="mail", request_id=f"t{n}")],
                record_impressions=True), timeout=10).results
            assert not result.error and not result.decision.degraded, result.error
            answers.append(result.decision.actions[0].action_id)

        _at_once(12, trigger)
    assert len(answers) == 12
    assert sum(a != "digest" for a in answers) == 2
    # (as stored: each replica's cache may still hold what it wrote last)
    profile = RedisStore(redis_url, namespace="trig", cache_ttl=0).get_profile("c0")
    assert profile is not None
    counted = {a: len(contact_entries(h)) for a, h in profile.contacts.items()}
    assert sum(n for a, n in counted.items() if a != "digest") == 2
    assert counted["digest"] == 10


def test_a_decision_made_again_whose_write_fails_leaves_the_others_as_stored(
        redis_url: str) -> None:
    """Only the decision made again is degraded when its own write fails: the others of
    its wave were stored with their sends in the first round trip and are answered so."""
    from engine.ports import StoreUnavailable

    other = Arbiter(load_text(RULES), RedisStore(redis_url, namespace="part"), seed=2)
    arbiter = Arbiter(load_text(RULES), RedisStore(redis_url, namespace="part"), seed=1)
    running = server.start(arbiter, "127.0.0.1", 0)
    show = running.decide_io.save_shown_decisions  # type: ignore[attr-defined]
    calls = 0

    async def failing() -> Any:
        raise StoreUnavailable("redis: the write timed out")

    def second_fails(shown: Any, timeout: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return show(shown, timeout)
        return [True] * len(shown), failing()

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            for user in ("c0", "c1"):
                stub.Decide(pb.DecideRequest(user_id=user, placement="mail"))  # cached
            other.track(user_id="c0", event_type="visit", traits={"tier": "gold"})
            running.decide_io.save_shown_decisions = second_fails  # type: ignore[attr-defined]
            response = stub.DecideBatch(pb.DecideBatchRequest(requests=[
                pb.DecideRequest(user_id=u, placement="mail") for u in ("c0", "c1")],
                record_impressions=True), timeout=10)
    finally:
        running.stop(grace=0.2)
    assert calls == 2  # c0's profile had changed: made again, and that write failed
    c0, c1 = response.results
    assert c0.decision.degraded and not c1.decision.degraded
    profile = RedisStore(redis_url, namespace="part", cache_ttl=0).get_profile("c1")
    assert profile is not None and sum(len(contact_entries(h))
                                       for h in profile.contacts.values()) == 1


def test_in_memory_keyed_campaigns_at_once_keep_the_caps() -> None:
    """In memory a keyed batch decides by waves that hand the loop back every few
    milliseconds, so campaigns at once interleave between a wave's reads and its
    writes: a send whose customer's profile changed meanwhile is decided again there
    too, and no customer gets more than the channel's cap of promotions."""
    from adapters.memory import MemoryStore

    store = MemoryStore()
    arbiter = Arbiter(load_text(RULES), store, seed=1)
    running = server.start(arbiter, "127.0.0.1", 0)
    users = [f"m{i}" for i in range(400)]
    answered: list[str] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)

            def campaign(k: int) -> None:
                response = stub.DecideBatch(pb.DecideBatchRequest(requests=[
                    pb.DecideRequest(user_id=u, placement="mail", request_id=f"{k}-{u}")
                    for u in users], record_impressions=True), timeout=30)
                for result in response.results:
                    assert not result.error and not result.decision.degraded
                    answered.append(result.decision.actions[0].action_id)

            _at_once(3, campaign)
    finally:
        running.stop(grace=0.2)
    assert len(answered) == 1200
    over = 0
    for user in users:
        profile = store.get_profile(user)
        assert profile is not None
        promos = sum(len(contact_entries(h)) for a, h in profile.contacts.items()
                     if a != "digest")
        over += promos > 2
    assert over == 0
    assert sum(a != "digest" for a in answered) == 800  # each customer's two promotions


def test_the_library_decides_a_send_again_when_another_replica_sent_meanwhile(
        redis_url: str) -> None:
    """``Arbiter.decide_shown`` (the Python API, no server) on two replicas of one Redis:
    one holds the profile it cached before the other sent the channel's cap of two, so
    its send is decided again on the profile as stored: the fallback, not a third."""
    one = Arbiter(load_text(RULES), RedisStore(redis_url, namespace="lib"), seed=1)
    two = Arbiter(load_text(RULES), RedisStore(redis_url, namespace="lib"), seed=2)
    one.decide(user_id="c0", placement="mail")  # (one caches that c0 has no profile)
    for _ in range(2):
        decision, counted = two.decide_shown(two.decide_request(user_id="c0",
                                                                placement="mail"))
        assert counted and decision.actions[0].action_id != "digest"
    decision, counted = one.decide_shown(one.decide_request(user_id="c0", placement="mail"))
    assert counted and [a.action_id for a in decision.actions] == ["digest"]
    profile = RedisStore(redis_url, namespace="lib", cache_ttl=0).get_profile("c0")
    assert profile is not None
    assert sum(len(contact_entries(h)) for h in profile.contacts.values()) == 3


def test_a_profile_found_corrupt_at_the_write_fails_its_own_send_not_the_batch(
        redis_url: str) -> None:
    """A customer's profile corrupted (by hand, by a bad build) after this server cached
    it: that send is answered with its decision and ``DATA_LOSS`` saying why it is not
    counted; the other customers of the batch are answered and counted as usual."""
    client = redis.Redis.from_url(redis_url)
    with serving(redis_url, "cx") as (stub, _):
        stub.Decide(pb.DecideRequest(user_id="c0", placement="mail"))  # cached: none
        client.set("cx:p:c0", b"\x00 not a profile")
        broken, fine = stub.DecideBatch(pb.DecideBatchRequest(requests=[
            pb.DecideRequest(user_id=u, placement="mail") for u in ("c0", "c1")],
            record_impressions=True), timeout=10).results
    assert broken.status == "DATA_LOSS" and "corrupt" in broken.error
    assert not fine.error and fine.decision.actions
    profile = RedisStore(redis_url, namespace="cx", cache_ttl=0).get_profile("c1")
    assert profile is not None
    assert sum(len(contact_entries(h)) for h in profile.contacts.values()) == 1
    assert client.get("cx:p:c0") == b"\x00 not a profile"  # (left for ForgetProfile)
