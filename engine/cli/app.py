"""The ``arbiter`` command: a parser with one subcommand per module of
:mod:`engine.cli.commands`.

    arbiter serve --rules rulesets/retail [--port 50051] [--redis redis://...]
    arbiter check rulesets/retail [--format json]
    arbiter fmt rulesets/retail [--check]
    arbiter test rulesets/retail
    arbiter explain rulesets/retail --profile p.toml --placement email
    arbiter decide --rules rulesets/retail --user ann --placement email --explain
    arbiter decide --target localhost:50051 --user ann --placement homepage_banner
    arbiter report hero_test --target localhost:50051 --plot hero.png
    arbiter replay decisions.jsonl --rules rulesets/candidate
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata

from engine.cli.commands import (
    check,
    decide,
    erase_log,
    fmt,
    items,
    profile,
    replay,
    report,
    serve,
    test,
    track,
)
from engine.cli.logs import configure
from engine.ports import StoreUnavailable

COMMANDS = (serve, check, decide, fmt, test, report, replay, items, profile, erase_log,
            track)
"""Each module registers its subcommand(s); adding a command is adding a module here.

Command modules import at the top only what registering needs; ``run`` imports the
engine, gRPC, NumPy or River when the command uses them, so ``arbiter check`` and
``arbiter fmt`` start in a fraction of a second."""
log = logging.getLogger("arbiter")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbiter", description="Next-best-action decisions.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one object per line (time, level, logger, message, fields)")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def version() -> str:
    """The installed distribution's version (``arbiter --version``)."""
    try:
        return metadata.version("arbiter-nba")
    except metadata.PackageNotFoundError:  # running from a checkout without installing
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for serve --processes
    configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    started = time.perf_counter()
    try:
        code: int = args.func(args)
    except StoreUnavailable as err:  # a known condition: one line, not a traceback
        print(f"arbiter {args.command}: the store did not answer: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `arbiter check ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (as Python's docs
        return 141  # advise: no second error at exit; 128 + SIGPIPE, as a shell reports)
    log.debug("done in %.3fs", time.perf_counter() - started)
    return code
