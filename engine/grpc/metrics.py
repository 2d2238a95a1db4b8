"""Prometheus metrics of one server (prometheus-client), on ``arbiter serve --metrics-port``.

Each server has its own registry: RPCs by method and status, their latency, decisions
by placement, action and arm, learning events applied and how far the learner is
behind; read at scrape time: the serving ruleset revision, reload failures, each
model's rolling AUC and examples.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.decide.decision import Decision
from engine.learning.quality import POOLED
from engine.reloader import RulesetReloader
from engine.service import Arbiter

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)


class ServerMetrics:
    """The counters and histograms the servicers update."""

    def __init__(self, arbiter: Arbiter, reloader: RulesetReloader | None) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter("arbiter_rpc", "RPCs answered, by method and status code",
                            ["method", "code"], registry=self.registry)
        self.latency = Histogram("arbiter_rpc_seconds", "RPC handling time", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decisions = Counter("arbiter_decisions", "Actions shown, by placement, action "
                                 "and experiment arm", ["placement", "action", "arm"],
                                 registry=self.registry)
        self.degraded = Counter("arbiter_degraded_decisions", "Decisions made without the "
                                "store (an unknown customer, not recorded)",
                                registry=self.registry)
        self.answered_again = Counter(
            "arbiter_decisions_answered_again", "Decide requests answered with the answer "
            "kept for their request_id (retries: nothing decided or recorded)",
            registry=self.registry)
        self.sends_contended = Counter(
            "arbiter_sends_contended", "Recorded sends (DecideBatch record_impressions) "
            "whose customer's profile changed before they were stored, by what followed: "
            "again (decided again on the profile as it is now), aborted (attempts ran "
            "out: ABORTED, nothing recorded)", ["outcome"], registry=self.registry)
        self.store_seconds = Histogram("arbiter_store_seconds", "Decide's store waits "
                                       "(read: profile, write: decision record)", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_errors = Counter("arbiter_store_errors", "Decide's store waits that "
                                    "failed or ran out of time", ["op"],
                                    registry=self.registry)
        self.undecodable_requests = Counter(
            "arbiter_undecodable_requests", "Requests whose bytes were not the method's "
            "message (answered INVALID_ARGUMENT)", ["method"], registry=self.registry)
        self.registry.register(_StateCollector(arbiter, reloader))
        self._http: Any = None
        self._children: dict[tuple[Any, ...], Any] = {}
        """Labelled children by (metric, *labels): ``labels()`` locks and checks each call
        (~1.5 µs); the label sets are bounded by the methods, codes and ruleset's actions."""

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._child(self.rpcs, method, code.name).inc()
        self._child(self.latency, method).observe(seconds)

    def undecodable(self, method: str) -> None:
        self.undecodable_requests.labels(method).inc()

    def store(self, op: str, seconds: float, failed: bool = False) -> None:
        self._child(self.store_seconds, op).observe(seconds)
        if failed:
            self._child(self.store_errors, op).inc()

    def decided(self, decision: Decision) -> None:
        for action in decision.actions:
            self._child(self.decisions, decision.placement, action.action_id,
                        action.arm or "").inc()
        if decision.degraded:
            self.degraded.inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _StateCollector(Collector):
    """Values read when scraped: revision, reload failures, learning lag, model quality."""

    def __init__(self, arbiter: Arbiter, reloader: RulesetReloader | None) -> None:
        self.arbiter = arbiter
        self.reloader = reloader

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        revision = GaugeMetricFamily("arbiter_ruleset_info", "The serving ruleset",
                                     labels=["revision"])
        revision.add_metric([self.arbiter.ruleset.revision], 1.0)
        yield revision
        failures = self.reloader.failures if self.reloader is not None else 0
        yield GaugeMetricFamily("arbiter_reload_failures", "Rule edits rejected since start",
                                value=failures)
        learner = self.arbiter.learner
        yield GaugeMetricFamily("arbiter_learning_events_applied",
                                "Learning-log events this process has applied",
                                value=learner.applied)
        yield GaugeMetricFamily("arbiter_learning_leader", "1 while this process learns "
                                "from the learning log (every process with --learners "
                                "every; the elected one with --learners one)",
                                value=float(not learner.elected or learner.leading))
        yield CounterMetricFamily("arbiter_model_snapshots_adopted", "Snapshots of the one "
                                  "learner this process took (--learners one)",
                                  value=learner.adopted)
        lag = max(time.time() - learner.last_received, 0.0) if learner.last_received else 0.0
        yield GaugeMetricFamily("arbiter_learning_lag_seconds",
                                "Age of the newest learning event applied (0: none yet)",
                                value=lag)
        auc = GaugeMetricFamily("arbiter_model_auc", "Rolling ROC AUC (progressive "
                                "validation, final labels)", labels=["model"])
        examples = GaugeMetricFamily("arbiter_model_examples", "Shown actions learnt",
                                     labels=["model"])
        learnt = GaugeMetricFamily("arbiter_learnt_metric", "The recommender's, clusters' "
                                   "and scores' own measures (hit_rate@10, silhouette, mae, "
                                   "cluster shares, ...)", labels=["model", "metric"])
        pooled = GaugeMetricFamily("arbiter_model_pooled_feature_values", "Values of a "
                                   "one-hot feature with a weight of their own, for each "
                                   "feature at its vocabulary limit (later values share "
                                   "one)", labels=["model", "feature"])
        for q in [*self.arbiter.models.quality(), *self.arbiter.learnt_quality()]:
            own = q.own_metrics()
            if q.rolling_auc == q.rolling_auc or not own:  # a classifier's AUC
                auc.add_metric([q.model], q.rolling_auc)
            examples.add_metric([q.model], q.examples)
            for name, value in own.items():
                if not name.startswith("centre:"):  # centres: arbiter report --clusters
                    learnt.add_metric([q.model, name], value)
            for feature in q.pooled():
                pooled.add_metric([q.model, feature], q.metrics[POOLED + feature])
        yield auc
        yield examples
        yield learnt
        yield pooled
        yield GaugeMetricFamily("arbiter_catalogue_items", "Catalogue items served",
                                value=len(self.arbiter.catalogue))
        decision_log = self.arbiter.decision_log
        if decision_log is not None:
            yield CounterMetricFamily("arbiter_decision_log_dropped", "Decision-log lines "
                                      "dropped because the writer was behind",
                                      value=decision_log.dropped)
