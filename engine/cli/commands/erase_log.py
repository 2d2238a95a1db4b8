"""``arbiter erase-log``: erase users from decision-log files at rest (rotated, archived).

ForgetProfile erases a user from every serving process's current log; files rotated away
are not touched. ``arbiter erase-log --user ID FILE...`` blanks their lines in the files
given, in place, as ForgetProfile does (their decisions and outcomes, and the outcomes of
their decisions). A compressed file is refused: decompress it, erase, compress again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("erase-log", help="erase users' lines from decision-log files "
                                         "(rotated ones too)")
    p.add_argument("files", nargs="+", metavar="FILE", help="decision-log files")
    p.add_argument("--user", action="append", required=True, metavar="USER_ID",
                   help="a user whose lines to erase (repeat for more)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapters.decision_log import erase_users

    status = 0
    for name in args.files:
        path = Path(name)
        if path.suffix in COMPRESSED:
            print(f"arbiter erase-log: {name} is compressed: decompress it, erase, compress "
                  "it again", file=sys.stderr)
            status = 2
        elif not path.is_file():
            print(f"arbiter erase-log: no file at {name}", file=sys.stderr)
            status = 2
        else:
            try:
                erased = erase_users(path, args.user)
            except OSError as err:
                print(f"arbiter erase-log: {name}: {err.strerror or err}", file=sys.stderr)
                status = max(status, 1)
                continue
            print(f"{name}: {erased} line(s) erased")
    return status
