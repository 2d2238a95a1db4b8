"""Model snapshots are signed; a refused or unloadable one means relearning from the log."""

from __future__ import annotations

import pickle

import pytest

from adapters.memory import MemoryStore
from dsl.ruleset import DEFAULT_MODEL, Ruleset
from engine.learning.snapshots import sign
from engine.service import Arbiter

KEY = b"operator key"
X = {"segment:frequent_visitor": 1.0}


class Boom:
    """Unpickling this runs code: what an attacker with write access would store."""

    ran = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (Boom.trigger, ())

    @staticmethod
    def trigger() -> None:
        Boom.ran = True


def trained(retail: Ruleset, store: MemoryStore, snapshot: bool = True) -> Arbiter:
    arb = Arbiter(retail, store, seed=1, snapshot_key=KEY)
    arb.track(user_id="vera", event_type="visit")
    for _ in range(20):
        d = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
    arb.learn()
    if snapshot:
        arb.learner.snapshot()  # the log below it is trimmed
    return arb


def predictions(arb: Arbiter) -> dict[str, float]:
    return {a: arb.models.predict(a, DEFAULT_MODEL, 0.05, X)
            for a in ("vip_early_access", "new_arrivals", "free_shipping")}


def test_a_signed_snapshot_restores_the_models(retail: Ruleset) -> None:
    store = MemoryStore()
    first = trained(retail, store)
    second = Arbiter(retail, store, seed=2, snapshot_key=KEY)
    assert second.learner.applied == 0  # nothing replayed: the snapshot was loaded
    assert predictions(second) == pytest.approx(predictions(first))


@pytest.mark.parametrize("forge", ["unsigned", "other key", "tampered"])
def test_a_forged_snapshot_is_never_unpickled(retail: Ruleset, forge: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    first = trained(retail, store, snapshot=False)  # the log is whole
    offset = ""
    evil = pickle.dumps(Boom())
    stored = {"unsigned": evil, "other key": sign(b"attacker", offset, evil),
              "tampered": sign(KEY, offset, b"x")[:-1] + evil}[forge]
    store.save_models(stored, offset)
    Boom.ran = False
    second = Arbiter(retail, store, seed=2, snapshot_key=KEY)
    assert not Boom.ran
    assert "model snapshot not loaded" in caplog.text
    assert second.learner.applied > 0  # relearnt from the log instead
    assert predictions(second) == pytest.approx(predictions(first))


def test_a_snapshot_that_fails_to_load_means_relearning(retail: Ruleset) -> None:
    """A River upgrade can break unpickling (AttributeError, ModuleNotFoundError)."""
    store = MemoryStore()
    first = trained(retail, store, snapshot=False)
    offset = ""
    broken = pickle.dumps((2, b"\x80\x04cnowhere\nGone\n.", None))
    store.save_models(sign(KEY, offset, broken), offset)
    second = Arbiter(retail, store, seed=2, snapshot_key=KEY)
    assert second.learner.applied > 0
    assert predictions(second) == pytest.approx(predictions(first))


def test_snapshots_are_written_in_format_3_and_formats_2_and_1_still_load(retail: Ruleset
                                                                         ) -> None:
    """Format 2 keeps a score's waiting customers as tuples, format 3 the predictions
    awaiting their final label; a build before them does not know the magic, so it refuses
    the snapshot at load and relearns from the log (rather than loading objects it would
    fail on later). Format 1 and 2 snapshots, written by those builds, still load here."""
    from engine.learning.snapshots import _mac, verify

    store = MemoryStore()
    first = trained(retail, store)
    stored, offset = store.load_models()  # type: ignore[misc]
    assert stored.startswith(b"ARBS3")
    blob = verify(KEY, offset, stored)
    for old in (b"ARBS1", b"ARBS2"):  # as session-15 and session-16 builds wrote them
        older = old + _mac(KEY, offset, blob) + blob
        assert verify(KEY, offset, older) == blob
        store.save_models(older, offset)
        second = Arbiter(retail, store, seed=2, snapshot_key=KEY)
        assert second.learner.applied == 0  # loaded, not relearnt
        assert predictions(second) == pytest.approx(predictions(first))
