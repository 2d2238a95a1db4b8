"""What compiling a large ruleset costs, and a reload after an edit to one of its files.

    python -m bench.ruleset_build [--actions 400,4000] [--files 20]

For each size, a generated ruleset of that many segments and actions (each action with a
condition, a cap and a content template) spread over ``--files`` files, built in a fresh
process: the first build, a build of the same files again, and a build after one file
changed (what a server's reload does). Run from another checkout's folder to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = r"""
import json, sys, time
from pathlib import Path
from dsl.loader import build, read_sources

root = Path(sys.argv[1])
def timed():
    started = time.perf_counter()
    result = build(read_sources(root))
    assert result.ruleset is not None, result.diagnostics[:3]
    return time.perf_counter() - started

first, same = timed(), timed()
edited = root / "rules_0.arb"
edited.write_text(edited.read_text().replace("value: 1 ", "value: 2 ", 1))
print(json.dumps({"first": first, "same": same, "one_file_edited": timed()}))
"""

HEADER = """profile { tier: string  spend: number = 0  tags: list }
context { device: string }
events: visit, purchase
placement home { channels: web, app  slots: 3 }
placement mail { channels: email }
"""


def write_ruleset(root: Path, actions: int, files: int) -> None:
    """``actions`` segments and actions, spread over ``files`` files (and the schema's)."""
    (root / "schema.arb").write_text(HEADER)
    per_file = -(-actions // files)
    for f in range(files):
        lines = []
        for i in range(f * per_file, min(actions, (f + 1) * per_file)):
            lines.append(f"segment s{i} = profile.spend > {i} and count(visit, within="
                         f"{1 + i % 30}d) >= {i % 5} or \"t{i % 50}\" in profile.tags")
            lines.append(f"action a{i} {{ placements: {'home' if i % 2 else 'mail'}  when: "
                         f"s{i} and not s{(i + 1) % actions}  value: {1 + i % 17} cap: 2 per 7d"
                         f'  content {{ t: "Hi {{{{ profile.tier | default(\\"x\\") }}}} {i}" '
                         "} }")
        (root / f"rules_{f}.arb").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--actions", default="400,4000")
    parser.add_argument("--files", type=int, default=20)
    args = parser.parse_args()
    print("| actions | files | first build s | same files again s | one file edited s |")
    print("|---:|---:|---:|---:|---:|")
    for actions in (int(n) for n in args.actions.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            write_ruleset(Path(tmp), actions, args.files)
            out = subprocess.run([sys.executable, "-c", TIMING, tmp], check=True,
                                 capture_output=True, text=True, cwd=Path.cwd()).stdout
            times = json.loads(out)
            print(f"| {actions:,} | {args.files} | {times['first']:.2f} | {times['same']:.2f} "
                  f"| {times['one_file_edited']:.2f} |")


if __name__ == "__main__":
    main()
