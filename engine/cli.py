"""The ``arbiter`` command: serve, check, decide.

    arbiter serve --rules rulesets/retail [--port 50051] [--redis redis://...]
    arbiter check rulesets/retail [--format json]
    arbiter fmt rulesets/retail [--check]
    arbiter test rulesets/retail
    arbiter explain rulesets/retail --profile p.toml --placement email
    arbiter decide --rules rulesets/retail --user ann --placement email --explain
    arbiter decide --target localhost:50051 --user ann --placement homepage_banner
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from dsl.diagnostics import RulesetError
from dsl.loader import build, load_path, read_sources
from dsl.ruleset import Ruleset
from engine.requests import InvalidArgument

log = logging.getLogger("arbiter")


def _store(redis_url: str | None) -> Any:
    if redis_url:
        from adapters.redis_store import RedisStore

        store = RedisStore(redis_url)
        store.ping()
        return store
    from adapters.memory import MemoryStore

    return MemoryStore()


def _load(path: str, command: str) -> Ruleset | None:
    """The compiled ruleset, or None after printing why it cannot be loaded."""
    try:
        return load_path(path)
    except RulesetError as err:
        print(err.render(), file=sys.stderr)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"arbiter {command}: {err}", file=sys.stderr)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from engine import server
    from engine.reloader import RulesetReloader
    from engine.service import Arbiter

    ruleset = _load(args.rules, "serve")
    if ruleset is None:
        return 1
    for warning in ruleset.warnings:
        log.warning("%s", warning)
    arbiter = Arbiter(ruleset, _store(args.redis), seed=args.seed)
    reloader = RulesetReloader(args.rules, arbiter)
    running = server.start(arbiter, args.host, args.port, args.workers, reloader,
                           args.reload_interval)
    print(f"arbiter: serving {args.rules} (revision {ruleset.revision}) on "
          f"{args.host}:{running.port} with {'redis' if args.redis else 'in-memory'} store",
          flush=True)
    server.serve_forever(running)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        sources = read_sources(args.path)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"arbiter check: {err}", file=sys.stderr)
        return 1
    result = build(sources)
    diagnostics = sorted(result.diagnostics,
                         key=lambda d: (d.pos.file, d.pos.line, d.pos.column))
    errors = sum(d.severity == "error" for d in diagnostics)
    if args.format == "json":
        print(json.dumps({"errors": errors, "warnings": len(diagnostics) - errors,
                          "diagnostics": [d.as_dict() for d in diagnostics]}, indent=2))
    else:
        for d in diagnostics:
            print(d.render(sources), file=sys.stderr if d.severity == "error" else sys.stdout)
        warnings = len(diagnostics) - errors
        summary = f"{len(sources)} file(s): {errors} error(s), {warnings} warning(s)"
        if result.ruleset is not None:
            summary += (f"; revision {result.ruleset.revision}; cost bound "
                        f"{result.ruleset.cost} expression nodes per decision")
        print(summary)
    return 1 if errors else 0


def _parse_context(pairs: Sequence[str], schema: Any = None) -> dict[str, Any]:
    """``key=value`` pairs; typed by the ruleset's schema when known, else guessed."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"context.{key}", "expected key=value")
        kind = schema[key].type if schema is not None and key in schema else None
        if kind == "string":
            out[key] = raw
        elif kind == "bool" or raw in ("true", "false"):
            out[key] = raw == "true"
        else:
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = raw
    return out


def cmd_fmt(args: argparse.Namespace) -> int:
    """Rewrite rule files in the canonical layout; --check only reports."""
    import difflib
    from pathlib import Path

    from dsl.formatter import format_text

    try:
        sources = read_sources(args.path)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"arbiter fmt: {err}", file=sys.stderr)
        return 1
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
        if args.check:
            if args.diff:
                sys.stdout.writelines(difflib.unified_diff(
                    text.splitlines(keepends=True), formatted.splitlines(keepends=True),
                    path, f"{path} (formatted)"))
        else:
            Path(path).write_text(formatted, encoding="utf-8")
    verb = "would reformat" if args.check else "reformatted"
    for path in changed:
        print(f"{verb} {path}")
    print(f"{len(sources)} file(s), {len(changed)} {verb}")
    return 1 if failed or (args.check and changed) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why each action of a placement is or is not eligible, for a profile in a file."""
    args.explain = True
    args.target = None
    args.json = False
    return cmd_decide(args)


def cmd_test(args: argparse.Namespace) -> int:
    from engine.tester import discover, run_tests

    ruleset = _load(args.path, "test")
    if ruleset is None:
        return 1
    paths = discover(args.tests or args.path)
    report = run_tests(ruleset, paths)
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


def cmd_decide(args: argparse.Namespace) -> int:
    try:
        decision = _decide_remote(args) if args.target else _decide_local(args)
    except RulesetError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except InvalidArgument as err:
        print(f"arbiter {args.command}: invalid argument {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # unreadable or malformed --profile file
        print(f"arbiter {args.command}: {err}", file=sys.stderr)
        return 2
    if args.json:
        from google.protobuf.json_format import MessageToJson

        from engine.convert import decide_response

        print(MessageToJson(decide_response(decision)))
    else:
        print(decision.render())
    return 0


def _decide_local(args: argparse.Namespace) -> Any:
    from adapters.memory import MemoryStore
    from engine.scenario import apply_scenario, load_scenario
    from engine.service import Arbiter

    ruleset = load_path(args.rules)
    arbiter = Arbiter(ruleset, MemoryStore(), seed=args.seed)
    if args.profile:
        apply_scenario(arbiter, args.user, load_scenario(args.profile), arbiter.clock())
    return arbiter.decide(
        user_id=args.user, placement=args.placement, channel=args.channel,
        context=_parse_context(args.context, ruleset.context_schema), limit=args.limit,
        explain=args.explain)


def _decide_remote(args: argparse.Namespace) -> Any:
    import grpc

    from engine import convert
    from engine.gen.arbiter.v1 import decision_pb2 as pb
    from engine.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    context = {k: convert.to_value(v) for k, v in _parse_context(args.context).items()}
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        try:
            response = stub.Decide(pb.DecideRequest(
                user_id=args.user, placement=args.placement, channel=args.channel,
                context=context, limit=args.limit, explain=args.explain), timeout=10)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("request", err.details() or "") from err
            raise SystemExit(f"arbiter decide: {err.code().name}: {err.details()}") from err
    return convert.decision_from_response(response, args.user, args.placement, args.channel)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbiter", description="Next-best-action decisions.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a ruleset over gRPC")
    serve.add_argument("--rules", default="rulesets/retail", help="ruleset directory or file")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    serve.add_argument("--redis", metavar="URL", help="redis://host:port/db (default: in memory)")
    serve.add_argument("--workers", type=int, default=4,
                       help="request threads (more is slower under the GIL: bench/RESULTS.md)")
    serve.add_argument("--seed", type=int, help="seed of the Thompson sampler")
    serve.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                       help="how often to look for changed rule files (0: only on the "
                            "ReloadRuleset RPC)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="parse and check a ruleset; exit 1 on errors")
    check.add_argument("path")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.set_defaults(func=cmd_check)

    decide = sub.add_parser("decide", help="one decision, in process or from a server")
    where = decide.add_mutually_exclusive_group()
    where.add_argument("--rules", default="rulesets/retail", help="decide in process")
    where.add_argument("--target", help="host:port of a running server")
    decide.add_argument("--user", required=True)
    decide.add_argument("--placement", required=True)
    decide.add_argument("--channel", default="")
    decide.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE")
    decide.add_argument("--limit", type=int, default=0)
    decide.add_argument("--explain", action="store_true", help="why each action was chosen")
    decide.add_argument("--profile", help="JSON profile file to decide for (in process)")
    decide.add_argument("--seed", type=int)
    decide.add_argument("--json", action="store_true", help="print the DecideResponse as JSON")
    decide.set_defaults(func=cmd_decide)

    fmt = sub.add_parser("fmt", help="format rule files canonically (comments kept)")
    fmt.add_argument("path")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if any "
                                                          "file is not formatted")
    fmt.add_argument("--diff", action="store_true", help="with --check: show the changes")
    fmt.set_defaults(func=cmd_fmt)

    test = sub.add_parser("test", help="run the ruleset's *.test.toml tests")
    test.add_argument("path", help="ruleset directory")
    test.add_argument("--tests", help="test file or directory (default: the ruleset's)")
    test.add_argument("--verbose-tests", action="store_true", help="list passing tests too")
    test.set_defaults(func=cmd_test)

    explain = sub.add_parser("explain", help="why each action is or is not chosen")
    explain.add_argument("rules", help="ruleset directory")
    explain.add_argument("--profile", help="profile file (JSON or TOML); none: a new customer")
    explain.add_argument("--placement", required=True)
    explain.add_argument("--channel", default="")
    explain.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE")
    explain.add_argument("--user", default="explain-user")
    explain.add_argument("--limit", type=int, default=0)
    explain.add_argument("--seed", type=int, default=0)
    explain.set_defaults(func=cmd_explain)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code: int = args.func(args)
    log.debug("done in %.3fs", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
