"""The runnable examples in module docstrings."""

from __future__ import annotations

import doctest
import importlib
import os

import pytest

from tests.conftest import ROOT

MODULES = [
    "dsl.parser", "dsl.diagnostics", "dsl.compiler", "dsl.loader", "dsl.printer",
    "dsl.ruleset", "engine.profiles", "engine.experiments.posteriors", "engine.learning.models", "engine.service",
    "engine.experiments.bucketing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
    assert os.getcwd() == str(ROOT)
