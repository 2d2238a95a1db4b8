"""The layers are enforced: the import contracts hold, and breaking one fails the lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsl.vocabulary import LEARNERS
from engine.learning.registry import LEARNERS as FACTORIES
from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _copy_tree(target: Path) -> None:
    for package in ("dsl", "engine", "adapters"):
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency")
def test_the_import_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency")
@pytest.mark.parametrize(("module", "line", "contract"), [
    ("engine/decide/facts.py", "from adapters.memory import MemoryStore",
     "the decision path, experiments and learning are pure"),
    ("engine/service.py", "from adapters.redis_store import RedisStore",
     "only the composition roots (CLI, gRPC server) build concrete stores"),
    ("engine/experiments/report.py", "from engine.service import Arbiter",
     "engine layers"),
    ("adapters/memory.py", "from engine.service import Arbiter",
     "adapters implement the ports"),
    ("dsl/checker.py", "from engine.records import Profile",
     "the language knows nothing of the engine"),
])
def test_a_broken_layer_rule_fails_the_lint(tmp_path: Path, module: str, line: str,
                                            contract: str) -> None:
    _copy_tree(tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate violation\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert _status(result.stdout, contract) == "BROKEN", result.stdout


def _status(output: str, contract: str) -> str:
    """KEPT or BROKEN, as lint-imports reports the contract (its lines may be wrapped)."""
    text = " ".join(output.split())
    after = text[text.index(contract):]
    return min(("KEPT", "BROKEN"), key=lambda word: after.find(f" {word}") % len(after))


def test_every_learner_the_checker_accepts_has_a_factory() -> None:
    assert set(LEARNERS) == set(FACTORIES)
