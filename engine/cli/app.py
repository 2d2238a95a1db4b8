"""The ``arbiter`` command: serve, check, decide.

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
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from dsl.diagnostics import RulesetError
from dsl.loader import build, load_path, read_sources
from dsl.ruleset import Ruleset
from dsl.vocabulary import DEFAULT_REWARD_WAIT_SECONDS
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
    from engine.grpc import server
    from engine.reloader import RulesetReloader
    from engine.service import Arbiter

    ruleset = _load(args.rules, "serve")
    if ruleset is None:
        return 1
    for warning in ruleset.warnings:
        log.warning("%s", warning)
    decision_log = None
    if args.decision_log:
        from adapters.decision_log import JsonlDecisionLog

        decision_log = JsonlDecisionLog(args.decision_log)
    arbiter = Arbiter(ruleset, _store(args.redis), seed=args.seed,
                      reward_wait=args.reward_wait, decision_log=decision_log)
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
    from engine.cli.tester import discover, run_tests

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

        from engine.grpc.convert import decide_response

        print(MessageToJson(decide_response(decision)))
    else:
        print(decision.render())
    return 0


def _decide_local(args: argparse.Namespace) -> Any:
    from adapters.memory import MemoryStore
    from engine.cli.scenario import apply_scenario, load_scenario
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

    from engine.grpc import convert
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

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


def cmd_report(args: argparse.Namespace) -> int:
    """An experiment's report (or every model's quality) from a server or from Redis."""
    if not args.redis:
        args.target = args.target or "127.0.0.1:50051"
    try:
        if args.target:
            report, models = _report_remote(args)
        else:
            report, models = _report_local(args)
    except KeyError as err:
        print(f"arbiter report: {err.args[0]}", file=sys.stderr)
        return 2
    if args.format == "json":
        from google.protobuf.json_format import MessageToDict

        from engine.grpc.convert import quality_to_proto, report_to_proto

        out: dict[str, Any] = {}
        if report is not None:
            out["experiment"] = MessageToDict(report_to_proto(report))
        out["models"] = [MessageToDict(quality_to_proto(q)) for q in models]
        print(json.dumps(out, indent=2))
    else:
        if report is not None:
            print(report.render())
        if args.models or report is None:
            print(_render_models(models))
    if args.plot and report is not None:
        from engine.cli.plot import plot_report

        print(f"plot written to {plot_report(report, args.plot)}")
    return 0


def _render_models(models: Sequence[Any]) -> str:
    if not models:
        return "no propensity model has learnt anything yet"
    lines = [f"{'model':<24} {'learner':<22} {'examples':>9} {'AUC':>6} {'log loss':>9} "
             f"{'mean p':>7} {'rate':>7}"]
    for q in models:
        lines.append(f"{q.model:<24} {q.learner:<22} {q.examples:>9} {q.rolling_auc:>6.3f} "
                     f"{q.rolling_log_loss:>9.4f} {q.mean_predicted:>7.4f} "
                     f"{q.observed_rate:>7.4f}")
    lines.append("(progressive validation: each example predicted before it was learnt; "
                 "last 1,000 examples)")
    return "\n".join(lines)


def _report_local(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """From Redis: the counters for the experiment; the models only when asked (that
    means loading the snapshot and replaying the learning log after it)."""
    from engine.experiments.report import experiment_report
    from engine.service import Arbiter

    ruleset = load_path(args.rules)
    if args.experiment and args.experiment not in ruleset.experiments:
        known = ", ".join(sorted(ruleset.experiments)) or "none"
        raise KeyError(f"unknown experiment '{args.experiment}' (known: {known})")
    store = _store(args.redis)
    try:
        report = None
        if args.experiment:
            report = experiment_report(ruleset.experiments[args.experiment],
                                       store.arm_counts(args.experiment), time.time(),
                                       revision=ruleset.revision)
        if not args.models and report is not None:
            return report, []
        return report, Arbiter(ruleset, store).model_report()
    finally:
        store.close()


def _report_remote(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    import grpc

    from engine.grpc.convert import quality_from_proto, report_from_proto
    from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
    from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc

    with grpc.insecure_channel(args.target) as channel:
        stub = rpb_grpc.ReportServiceStub(channel)
        try:
            report = None
            if args.experiment:
                report = report_from_proto(stub.ExperimentReport(
                    rpb.ExperimentReportRequest(experiment=args.experiment), timeout=30))
            models = []
            if args.models or report is None:
                models = [quality_from_proto(q) for q in
                          stub.ModelReport(rpb.ModelReportRequest(), timeout=30).models]
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise KeyError(err.details()) from err
            raise SystemExit(f"arbiter report: {err.code().name}: {err.details()}") from err
    return report, models


def cmd_replay(args: argparse.Namespace) -> int:
    """Off-policy estimate of a candidate ruleset's reward on a decision log."""
    from adapters.decision_log import read_log
    from engine.cli.replay import replay

    candidate = _load(args.rules, "replay")
    if candidate is None:
        return 1
    try:
        entries = read_log(args.log)
    except OSError as err:
        print(f"arbiter replay: {err}", file=sys.stderr)
        return 2
    reward, _, value = args.reward.partition(".")
    result = replay(entries, candidate, reward=reward, value=value == "value", seed=args.seed)
    if args.format == "json":
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
    else:
        print(result.render())
    return 0 if result.decisions else 1


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
    serve.add_argument("--decision-log", metavar="FILE.jsonl",
                       help="append every decision and outcome here (for arbiter replay)")
    serve.add_argument("--reward-wait", type=float, default=DEFAULT_REWARD_WAIT_SECONDS,
                       metavar="SECONDS",
                       help="an impression with no click or conversion after this long is "
                            "a negative example for the propensity models (default %(default)s)")
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

    report = sub.add_parser("report", help="an experiment's arms, or the models' quality")
    report.add_argument("experiment", nargs="?", help="experiment name (omit: models only)")
    source = report.add_mutually_exclusive_group()
    source.add_argument("--target", help="host:port of a running server (default 127.0.0.1:50051)")
    source.add_argument("--redis", help="read the statistics from Redis instead")
    report.add_argument("--rules", default="rulesets/retail",
                        help="ruleset directory (with --redis)")
    report.add_argument("--models", action="store_true", help="also the models' quality")
    report.add_argument("--plot", metavar="FILE.png", help="draw the arms' posteriors")
    report.add_argument("--format", choices=("text", "json"), default="text")
    report.set_defaults(func=cmd_report)

    replay = sub.add_parser("replay", help="estimate a candidate ruleset's reward from logs")
    replay.add_argument("log", help="decision log (arbiter serve --decision-log)")
    replay.add_argument("--rules", required=True, help="the candidate ruleset directory")
    replay.add_argument("--reward", default="click",
                        help="reward outcome: click, conversion, or conversion.value")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--format", choices=("text", "json"), default="text")
    replay.set_defaults(func=cmd_replay)

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
