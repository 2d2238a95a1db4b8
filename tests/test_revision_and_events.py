"""The revision depends on the files only; undeclared event types are rejected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_path
from dsl.ruleset import Ruleset
from engine.requests import InvalidArgument
from engine.service import Arbiter
from tests.conftest import RETAIL, ROOT


def test_the_revision_does_not_depend_on_how_the_path_is_spelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    relative = load_path(os.path.relpath(RETAIL)).revision
    assert load_path(RETAIL.resolve()).revision == relative
    assert load_path(f"./{os.path.relpath(RETAIL)}/").revision == relative
    copy = tmp_path / "deployed" / "rules"
    shutil.copytree(RETAIL, copy)
    assert load_path(copy).revision == relative  # another replica, another directory


def test_an_undeclared_event_type_is_invalid_and_stores_nothing(retail: Ruleset) -> None:
    arb = Arbiter(retail, MemoryStore(), seed=1)
    with pytest.raises(InvalidArgument) as err:
        arb.track(user_id="ann", event_type="purchse")
    assert err.value.field == "event_type"
    assert "did you mean 'purchase'?" in str(err.value)
    assert arb.get_profile("ann") is None
    arb.track(user_id="ann", event_type="purchase")
