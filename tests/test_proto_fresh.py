"""The committed generated code under engine/grpc/gen matches proto/ (run `make proto` if not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.grpc import protogen

ROOT = Path(__file__).resolve().parent.parent


def _normalise(text: str) -> list[str]:
    # version stamps depend on the installed grpcio-tools, not on the proto
    return [line for line in text.splitlines()
            if "Protobuf Python Version" not in line and "GRPC_GENERATED_VERSION" not in line
            and "_version" not in line.lower()]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generated = protogen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    for path in generated:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert _normalise(committed.read_text()) == _normalise(path.read_text()), (
            f"{committed.relative_to(ROOT)} is stale: run `make proto` and commit the result")
