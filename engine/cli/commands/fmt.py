"""``arbiter fmt``: rewrite rule files in the canonical layout; --check only reports."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from dsl.diagnostics import RulesetError
from dsl.formatter import format_text
from engine.cli.common import read_rule_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fmt", help="format rule files canonically (comments kept)")
    p.add_argument("path")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if any file is not formatted")
    p.add_argument("--diff", action="store_true",
                   help="show the changes instead of making them (implies --check)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sources = read_rule_files(args.path, "fmt")
    if sources is None:
        return 1
    args.check = args.check or args.diff  # (--diff alone rewrote the files it showed)
    changed: list[str] = []
    failed = False
    sources = {p: t for p, t in sources.items() if p.endswith(".arb")}
    for path, text in sources.items():
        try:
            formatted = format_text(text, path)
        except RulesetError as err:
            print(err.render(), file=sys.stderr)
            failed = True
            continue
        if formatted == text:
            continue
        changed.append(path)
        if not args.check:
            Path(path).write_text(formatted, encoding="utf-8")
        elif args.diff:
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(keepends=True), formatted.splitlines(keepends=True),
                path, f"{path} (formatted)"))
    verb = "would reformat" if args.check else "reformatted"
    for path in changed:
        print(f"{verb} {path}")
    print(f"{len(sources)} file(s), {len(changed)} {verb}")
    return 1 if failed or (args.check and changed) else 0
