"""``arbiter test``: the ruleset's ``*.test.toml`` cases, with coverage."""

from __future__ import annotations

import argparse

from engine.cli.common import load_ruleset, memory_store_factory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="run the ruleset's *.test.toml tests")
    p.add_argument("path", help="ruleset directory")
    p.add_argument("--tests", help="test file or directory (default: the ruleset's)")
    p.add_argument("--verbose-tests", action="store_true", help="list passing tests too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli.tester import discover, run_tests  # the engine, with River and NumPy

    ruleset = load_ruleset(args.path, "test")
    if ruleset is None:
        return 1
    report = run_tests(ruleset, discover(args.tests or args.path), memory_store_factory())
    for error in report.errors:
        print(f"ERROR {error}")
    for result in report.results:
        if result.passed:
            if args.verbose_tests:
                print(f"PASS {result.location}: {result.name}")
            continue
        print(f"FAIL {result.location}: {result.name}")
        for failure in result.failures:
            print(f"    {failure}")
    for line in report.coverage.summary(ruleset):
        print(line)
    if not report.results and not report.errors:
        print(f"no tests found (*.test.toml under {args.tests or args.path})")
    passed = sum(r.passed for r in report.results)
    print(f"{passed} passed, {report.failed} failed")
    return 1 if report.failed else 0
