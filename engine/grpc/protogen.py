"""Generate the Python protobuf/gRPC code under ``engine/grpc/gen`` from ``proto/``.

Run ``python -m engine.grpc.protogen`` (or ``make proto``) after editing a ``.proto``
file. ``tests/test_proto_fresh.py`` regenerates into a temporary directory and
fails when the committed code differs.

The proto files are mapped onto the virtual path ``engine/grpc/gen`` so that
the generated modules import each other as ``engine.grpc.gen.arbiter.v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
VIRTUAL_PREFIX = "engine/grpc/gen"
PROTO_FILES = ("arbiter/v1/decision.proto", "arbiter/v1/admin.proto",
               "arbiter/v1/report.proto")


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc for every proto file; return the generated files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    targets = [f"{VIRTUAL_PREFIX}/{name}" for name in PROTO_FILES]
    args = [
        "protoc",
        f"-I{VIRTUAL_PREFIX}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *targets,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated = sorted((out_dir / VIRTUAL_PREFIX).rglob("*.py*"))
    for folder in {p.parent for p in generated}:
        while folder != out_dir and folder.is_relative_to(out_dir / "engine"):
            (folder / "__init__.py").touch()
            folder = folder.parent
    return [p for p in generated if p.name != "__init__.py"]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT), file=sys.stdout)
