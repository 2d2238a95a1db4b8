"""``arbiter check``: parse and check a ruleset; every diagnostic as file:line:col."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from dsl.diagnostics import Diagnostic
from dsl.loader import build
from dsl.ruleset import Ruleset
from engine.cli.common import add_format_argument, read_rule_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="parse and check a ruleset; exit 1 on errors")
    p.add_argument("path")
    add_format_argument(p)
    p.set_defaults(func=run)


def learnt_summary(ruleset: Ruleset) -> list[str]:
    """What the ruleset learns online, one line each (a marketer's check of the setup)."""
    lines = []
    recommending = sorted(a.id for a in ruleset.actions.values() if a.recommend is not None)
    if ruleset.items_declared:
        lines.append(f"catalogue: {len(ruleset.catalogue)} item(s) in the ruleset's file; "
                     f"recommend() in {', '.join(recommending) or 'no action'}")
    for spec in ruleset.clusters.values():
        names = f", named {', '.join(spec.names)}" if spec.names else ""
        lines.append(f"cluster {spec.name}: k={spec.k} on {', '.join(spec.features)}{names}")
    for score in ruleset.scores.values():
        kind = "label" if score.binary else "target"
        lines.append(f"score {score.name}: {kind} {score.text} from "
                     f"{', '.join(score.features)}")
    return lines


def attribution_summary(ruleset: Ruleset) -> list[str]:
    """The placements whose decisions take feedback (and keep their records) for their
    own time, one line each: what a deployment's store holds is proportional to it.

    >>> from dsl.loader import load_text
    >>> attribution_summary(load_text("placement web { channels: web  attribution: 36h }"))
    ['placement web: takes feedback for 1.5d after each decision (attribution)']
    """
    return [f"placement {name}: takes feedback for {_duration(placement.attribution)} "
            "after each decision (attribution)"
            for name, placement in sorted(ruleset.placements.items())
            if placement.attribution is not None]


def ended_actions(ruleset: Ruleset, now: float) -> list[Diagnostic]:
    """A warning for each action whose ``ends`` has passed (a typo'd year is an action
    never shown, without a word): the one check that reads the clock, so it is made here,
    not by the compiler, whose verdict on a ruleset never changes.

    >>> from dsl.loader import load_text
    >>> rules = load_text("placement web { channels: web }\\n"
    ...                   "action a { placements: web  value: 1  ends: 2025-12-01 }")
    >>> [d.message for d in ended_actions(rules, now=1_767_225_600.0)]
    ["action 'a' ended on 2025-12-01 ('ends'): it is never shown"]
    """
    return [Diagnostic("warning", f"action '{action.id}' ended on "
                       f"{datetime.fromtimestamp(action.ends, UTC):%Y-%m-%d} ('ends'): it is "
                       "never shown", action.pos)
            for action in ruleset.actions.values()
            if action.ends is not None and action.ends <= now]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def run(args: argparse.Namespace) -> int:
    sources = read_rule_files(args.path, "check")
    if sources is None:
        return 1
    result = build(sources)
    found = list(result.diagnostics)
    if result.ruleset is not None:
        found += ended_actions(result.ruleset, time.time())
    diagnostics = sorted(found, key=lambda d: (d.pos.file, d.pos.line, d.pos.column))
    errors = sum(d.severity == "error" for d in diagnostics)
    if args.format == "json":
        print(json.dumps({"errors": errors, "warnings": len(diagnostics) - errors,
                          "diagnostics": [d.as_dict() for d in diagnostics]}, indent=2))
        return 1 if errors else 0
    for d in diagnostics:
        print(d.render(sources), file=sys.stderr if d.severity == "error" else sys.stdout)
    summary = f"{len(sources)} file(s): {errors} error(s), {len(diagnostics) - errors} warning(s)"
    if result.ruleset is not None:
        summary += (f"; revision {result.ruleset.revision}; cost bound "
                    f"{result.ruleset.cost} expression nodes per decision")
        if result.ruleset.population:
            summary += ("; reads population percentiles of "
                        + ", ".join(result.ruleset.population.values()))
        summary += "".join(f"\n{line}" for line in (*learnt_summary(result.ruleset),
                                                     *attribution_summary(result.ruleset)))
    print(summary)
    return 1 if errors else 0
