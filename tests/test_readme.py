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
