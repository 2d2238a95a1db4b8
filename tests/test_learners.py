"""``--learners one``: one process learns from the log, the others adopt its snapshots."""

from __future__ import annotations

import time

import pytest

from adapters.redis_store import RedisStore
from dsl.ruleset import Ruleset
from engine.learning import consumer
from engine.service import Arbiter

KEY = b"operator key"
X = {"segment:frequent_visitor": 1.0}
ACTIONS = ("bestsellers", "vip_early_access", "new_arrivals")


def predictions(arb: Arbiter) -> dict[str, float]:
    """The banner's propensity models' predictions for one customer."""
    out = {}
    for action in ACTIONS:
        spec, prior = arb.spec_of("homepage_banner", action)
        out[action] = arb.models.predict(action, spec, prior, X, "homepage_banner")
    return out


def clicks(arb: Arbiter, user: str, n: int) -> None:
    """``n`` banner decisions for ``user``, each clicked (feedback through ``arb``)."""
    arb.track(user_id=user, event_type="visit")
    for _ in range(n):
        d = arb.decide(user_id=user, placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")


@pytest.fixture
def replicas(retail: Ruleset, redis_url: str,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Arbiter, Arbiter]:
    monkeypatch.setattr(consumer, "PUBLISH_SECONDS", 0.0)  # publish at every step
    monkeypatch.setattr(consumer, "SNAPSHOT_SHARE", 1.0)
    first = Arbiter(retail, RedisStore(redis_url), seed=1, snapshot_key=KEY, learners="one")
    second = Arbiter(retail, RedisStore(redis_url), seed=2, snapshot_key=KEY,
                     learners="one")
    return first, second  # the first made took the lease (an Arbiter learns at start)


def test_one_process_learns_and_the_other_adopts_what_it_publishes(
        replicas: tuple[Arbiter, Arbiter]) -> None:
    learner, follower = replicas
    untrained = predictions(follower)
    clicks(learner, "vera", 15)
    clicks(follower, "otto", 15)  # feedback through either replica reaches the log
    assert learner.learn() > 0 and learner.learner.leading
    assert follower.learn() == 0 and not follower.learner.leading
    assert follower.learner.applied == 0  # it read no log entry
    assert follower.learner.adopted == 1 and follower.learner.offset == learner.learner.offset
    assert predictions(follower) == pytest.approx(predictions(learner))
    assert predictions(follower) != pytest.approx(untrained)
    assert [q.examples for q in follower.model_report()] == \
        [q.examples for q in learner.model_report()]
    assert follower.learner.applied == 0  # a report adopts too, never reads the log


def test_when_the_learner_stops_another_takes_over_from_its_snapshot(
        replicas: tuple[Arbiter, Arbiter]) -> None:
    learner, follower = replicas
    clicks(learner, "vera", 10)
    learner.learn()
    learnt = learner.learner.offset
    learner.close()  # a last snapshot, and the lease let go
    clicks(follower, "otto", 10)
    after = len(follower.store.learning_events(learnt, 1000))  # 10 clicks, and the visit
    assert follower.learn() == after and follower.learner.leading
    assert follower.learner.adopted == 1  # started from the learner's snapshot
    assert follower.learner.applied == after  # and learnt only what came after it
    assert follower.learner.offset > learnt


def test_a_learner_that_stops_renewing_is_replaced_when_its_lease_expires(
        replicas: tuple[Arbiter, Arbiter], monkeypatch: pytest.MonkeyPatch) -> None:
    learner, follower = replicas
    monkeypatch.setattr(consumer, "LEASE_SECONDS", 0.3)
    learner.learn()  # renewed for 0.3 s, then silent (a process that hung or died)
    assert follower.learn() == 0 and not follower.learner.leading
    time.sleep(0.5)
    clicks(follower, "otto", 5)
    assert follower.learn() > 5 and follower.learner.leading  # the clicks and the visit
    assert learner.learn() == 0 and not learner.learner.leading  # it follows when back
    assert learner.learner.adopted == 1 and predictions(learner) == \
        pytest.approx(predictions(follower))


def test_one_learner_without_a_snapshot_key_is_refused(retail: Ruleset, redis_url: str) -> None:
    """Without a key the others could never load the learner's snapshots: their models
    would never learn anything."""
    with pytest.raises(ValueError, match="needs a snapshot_key"):
        Arbiter(retail, RedisStore(redis_url), learners="one")


def test_a_damaged_snapshot_offset_stops_neither_learning_nor_following(
        replicas: tuple[Arbiter, Arbiter], redis_url: str) -> None:
    """The stored snapshot's offset overwritten with junk: the learner keeps learning (and
    publishes over it), the follower adopts nothing until then, no exception escapes."""
    import redis

    learner, follower = replicas
    redis.Redis.from_url(redis_url).hset("arb:models", "offset", "junk")
    assert follower.learn() == 0 and follower.learner.adopted == 0
    clicks(learner, "vera", 5)
    assert learner.learn() > 0
    assert follower.learn() == 0 and follower.learner.adopted == 1
    assert predictions(follower) == pytest.approx(predictions(learner))
