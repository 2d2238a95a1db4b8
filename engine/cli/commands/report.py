"""``arbiter report``: an experiment's arms, or the models' quality, from a server or Redis."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dsl.diagnostics import RulesetError
from dsl.loader import load_path
from engine.cli.client import add_client_arguments, open_channel
from engine.cli.common import (
    add_format_argument,
    add_snapshot_key_argument,
    default_rules,
    open_store,
    snapshot_key,
)

if TYPE_CHECKING:  # numpy, scipy and river load only when a report is asked for
    from engine.experiments.report import ExperimentReport
    from engine.learning.quality import ModelQuality


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="an experiment's arms, or the models' quality")
    p.add_argument("experiment", nargs="?", help="experiment name (omit: models only)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--target", help="host:port of a running server (default 127.0.0.1:50051)")
    source.add_argument("--redis", help="read the statistics from Redis instead")
    p.add_argument("--namespace", default="arb", metavar="NAME",
                   help="the Redis keys' prefix the server was given (with --redis)")
    p.add_argument("--rules", default=default_rules(), help="ruleset directory (with --redis)")
    p.add_argument("--models", action="store_true", help="also the models' quality")
    p.add_argument("--clusters", action="store_true",
                   help="the learned clusters: sizes, centres, silhouette")
    add_snapshot_key_argument(p)
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the arms' posteriors (with --clusters: the clusters' centres)")
    add_format_argument(p)
    add_client_arguments(p)
    p.set_defaults(func=run)


Reports = tuple["ExperimentReport | None", "list[ModelQuality]"]


def run(args: argparse.Namespace) -> int:
    if not args.redis:
        args.target = args.target or "127.0.0.1:50051"
    try:
        report, models = _from_server(args) if args.target else _from_redis(args)
    except KeyError as err:
        print(f"arbiter report: {err.args[0]}", file=sys.stderr)
        return 2
    except RulesetError as err:  # --rules that do not compile: where, as arbiter check says
        print(err.render(), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:  # a Cluster node named redis://, a bad
        print(f"arbiter report: {err}", file=sys.stderr)  # namespace, no ruleset there
        return 2
    if args.format == "json":
        from google.protobuf.json_format import MessageToDict

        from engine.grpc.convert import quality_to_proto, report_to_proto

        def plain(message: Any) -> dict[str, Any]:  # every field, counts as integers
            return _integers(MessageToDict(message, always_print_fields_with_no_presence=True))

        out: dict[str, Any] = {}
        if report is not None:
            out["experiment"] = plain(report_to_proto(report))
        out["models"] = [plain(quality_to_proto(q)) for q in models]
        print(json.dumps(out, indent=2))
    else:
        if report is not None:
            print(report.render())
        if args.models or (report is None and not args.clusters):
            print(render_models(models))
        if args.clusters:
            print(render_clusters(models))
    if args.plot and args.clusters:
        from engine.cli.plot import plot_clusters

        rows = {q.model[len("cluster:"):]: q.metrics for q in models
                if q.model.startswith("cluster:") and "size:0" in q.metrics}
        try:
            print(f"clusters plot written to {plot_clusters(rows, args.plot)}")
        except RuntimeError as err:
            print(f"arbiter report: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # (a folder that does not exist: a traceback before)
            print(f"arbiter report: --plot {args.plot}: {err.strerror or err}",
                  file=sys.stderr)
            return 2
    elif args.plot and report is not None:
        from engine.cli.plot import plot_report

        try:
            print(f"plot written to {plot_report(report, args.plot)}")
        except RuntimeError as err:
            print(f"arbiter report: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"arbiter report: --plot {args.plot}: {err.strerror or err}",
                  file=sys.stderr)
            return 2
    return 0


COUNTS = {"exposures", "examples"}


def _integers(value: Any, key: str = "") -> Any:
    """JSON with counts as integers (proto doubles print 886.0, int64s print "886")."""
    if isinstance(value, dict):
        return {k: _integers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v, key) for v in value]
    if key in COUNTS and isinstance(value, str | float) and float(value).is_integer():
        return int(float(value))
    return value


def render_models(models: Sequence[ModelQuality]) -> str:
    """The models' progressive-validation quality as a table."""
    if not models:
        return "no propensity model has learnt anything yet"
    lines = [f"{'model':<24} {'learner':<22} {'examples':>9} {'AUC':>6} {'log loss':>9} "
             f"{'mean p':>7} {'rate':>7}"]
    for q in models:
        own = q.own_metrics()
        if own:  # a model measured its own way (the recommender, clusters, scores)
            shown = ", ".join(f"{k} {v:.4g}" if v == v else f"{k} n/a"
                              for k, v in sorted(own.items()))  # (a map over gRPC: no order)
            lines.append(f"{q.model:<24} {q.learner:<22} {q.examples:>9}  {shown}")
            continue
        pooled = q.pooled()
        lines.append(f"{q.model:<24} {q.learner:<22} {q.examples:>9} "
                     f"{_measured(q.rolling_auc, 6, 3)} {_measured(q.rolling_log_loss, 9, 4)} "
                     f"{_measured(q.mean_predicted, 7, 4)} {_measured(q.observed_rate, 7, 4)}"
                     + (f"  pooled beyond their vocabulary: {', '.join(pooled)}"
                        if pooled else ""))
    lines.append("(progressive validation: each example predicted before it was learnt; "
                 "last 1,000 examples)")
    return "\n".join(lines)


def _measured(value: float, width: int, places: int) -> str:
    """A measure right-aligned in ``width``; ``n/a`` for NaN (not measured yet).

    >>> _measured(0.25, 7, 4), _measured(float("nan"), 7, 4)
    (' 0.2500', '    n/a')
    """
    return f"{value:>{width}.{places}f}" if value == value else f"{'n/a':>{width}}"


def render_clusters(models: Sequence[ModelQuality]) -> str:
    """Each learned segmentation: its clusters' share of recent customers and centres (in
    the features' own units), and the silhouette on a sample (-1 to 1; above 0.5 is a
    clear structure, near 0 overlapping clusters)."""
    rows = [q for q in models if q.model.startswith("cluster:")]
    if not rows:
        return "no cluster has learnt anything yet (the ruleset defines none, or no TrackEvent)"
    out: list[str] = []
    for q in rows:
        metrics = q.metrics
        silhouette = metrics.get("silhouette", float("nan"))
        shown = f"{silhouette:.3f}" if silhouette == silhouette else "n/a (not seeded yet)"
        out.append(f"{q.model[len('cluster:'):]}  ({q.learner}, {q.examples} profiles "
                   f"learnt, silhouette {shown})")
        features = sorted({k.split(":", 2)[2] for k in metrics if k.startswith("centre:")},
                          key=lambda f: next(i for i, k in enumerate(metrics)
                                             if k.endswith(f":{f}")))
        if not features:
            continue
        out.append("  " + f"{'cluster':>7} {'share':>6} " + " ".join(f"{f:>12}" for f in features))
        number = 0
        while f"size:{number}" in metrics:
            centre = " ".join(f"{metrics[f'centre:{number}:{f}']:>12.4g}" for f in features)
            out.append(f"  {number:>7} {metrics[f'size:{number}']:>6.1%} {centre}")
            number += 1
    out.append("(clusters numbered by their first feature, lowest first: `names` follow "
               "that order)")
    return "\n".join(out)


def _from_redis(args: argparse.Namespace) -> Reports:
    """The counters for the experiment; the models only when asked (that means loading
    the snapshot and replaying the learning log after it)."""
    from engine.experiments.report import experiment_report
    from engine.service import Arbiter

    ruleset = load_path(args.rules)
    if args.experiment and args.experiment not in ruleset.experiments:
        known = ", ".join(sorted(ruleset.experiments)) or "none"
        raise KeyError(f"unknown experiment '{args.experiment}' (known: {known})")
    store = open_store(args.redis, namespace=args.namespace)
    try:
        report = None
        if args.experiment:
            experiment = ruleset.experiments[args.experiment]
            report = experiment_report(experiment, store.arm_counts(args.experiment),
                                       time.time(), revision=ruleset.revision,
                                       split=store.split_mark(args.experiment)
                                       if experiment.weights else None)
        if not (args.models or args.clusters) and report is not None:
            return report, []
        return report, Arbiter(ruleset, store, snapshot_key=snapshot_key(args),
                               serves=False).model_report()
    finally:
        store.close()


def _from_server(args: argparse.Namespace) -> Reports:
    import grpc

    from engine.grpc.convert import quality_from_proto, report_from_proto
    from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
    from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc

    with open_channel(args) as channel:
        stub = rpb_grpc.ReportServiceStub(channel)
        try:
            report = None
            if args.experiment:
                report = report_from_proto(stub.ExperimentReport(
                    rpb.ExperimentReportRequest(experiment=args.experiment), timeout=30))
            models = []
            if args.models or args.clusters or report is None:
                models = [quality_from_proto(q) for q in
                          stub.ModelReport(rpb.ModelReportRequest(), timeout=30).models]
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise KeyError(err.details()) from err
            raise SystemExit(f"arbiter report: {err.code().name}: {err.details()}") from err
    return report, models
