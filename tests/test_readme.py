"""The README's copy-paste client example runs against a real server."""

from __future__ import annotations

import re

import pytest

from engine.grpc.server import RunningServer
from tests.conftest import ROOT


def test_readme_python_client_example(running: RunningServer,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README has no python example"
    code = blocks[0].replace("127.0.0.1:50051", f"127.0.0.1:{running.port}")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed and printed[0].startswith("1 ")
    assert running.arbiter.store.get_profile("ann") is not None


def test_the_readme_says_how_to_run_every_benchmark() -> None:
    """Each runnable module in bench/ is in the README's table, as ``python -m bench.X``
    or through a make target the table names: a new benchmark is not left undocumented."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"`make (bench-[\w-]+)`", readme))
    by_make = {module for target in targets for module in re.findall(
        rf"^{re.escape(target)}:.*\n(?:\t.*\n)*?\t.*?bench[./](\w+)", makefile, re.M)}
    runnable = {path.stem for path in (ROOT / "bench").glob("*.py")
                if "__main__" in path.read_text(encoding="utf-8")
                or path.stem.startswith("test_")}
    undocumented = runnable - set(re.findall(r"python -m bench\.(\w+)", readme)) - by_make
    assert not undocumented, f"bench modules the README does not name: {undocumented}"
