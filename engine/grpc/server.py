"""gRPC server: a thin translation layer over :class:`engine.service.Arbiter`.

Adds the standard ``grpc.health.v1`` health service and server reflection, so
``grpcurl``/``grpc_health_probe`` work without our proto files. Each RPC maps
engine errors to status codes and never lets an exception reach gRPC unlogged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.grpc.admin_service import AdminServicer
from engine.grpc.decision_service import DecisionServicer
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.report_service import ReportServicer
from engine.grpc.security import TokenAuth, Tokens
from engine.ports import StoreUnavailable
from engine.reloader import RulesetReloader
from engine.service import Arbiter

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AdminService"].full_name
REPORT_SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["ReportService"].full_name
RELOAD_INTERVAL_SECONDS = 1.0
MAX_MESSAGE_BYTES = 1 << 20
SYNC_INTERVAL_SECONDS = 1.0
LEARN_WAKE_SECONDS = 0.5

R = TypeVar("R")


class RunningServer:
    """A started server: its port, and a stop that also stops the background loops."""

    def __init__(self, server: grpc.Server, port: int, arbiter: Arbiter,
                 health_servicer: health.HealthServicer,
                 reloader: RulesetReloader | None = None,
                 reload_interval: float = RELOAD_INTERVAL_SECONDS,
                 metrics: ServerMetrics | None = None) -> None:
        self.server = server
        self.metrics = metrics
        self.metrics_port = 0
        self.health_server: grpc.Server | None = None  # liveness on its own threads
        self.health_port = 0
        self.port = port
        self.arbiter = arbiter
        self.health = health_servicer
        self.reloader = reloader
        self._stopped = threading.Event()
        self._sync = threading.Thread(target=self._sync_loop, name="arbiter-sync", daemon=True)
        self._sync.start()
        threading.Thread(target=self._learn_loop, name="arbiter-learn", daemon=True).start()
        if reloader is not None and reload_interval > 0:
            threading.Thread(target=self._watch_loop, args=(reload_interval,),
                             name="arbiter-reload", daemon=True).start()

    def _watch_loop(self, interval: float) -> None:
        """Reload the ruleset when its files change (compiled here, off the request path)."""
        assert self.reloader is not None
        while not self._stopped.wait(interval):
            try:
                self.reloader.poll()
            except Exception:
                log.exception("ruleset reload failed; still serving %s",
                              self.arbiter.ruleset.revision)

    def _learn_loop(self) -> None:
        """Train the models soon after each feedback, off the request path."""
        logged = self.arbiter.feedback_logged
        while not self._stopped.is_set():
            if not logged.wait(LEARN_WAKE_SECONDS):
                continue
            logged.clear()
            try:
                self.arbiter.learn()
            except StoreUnavailable as err:
                log.warning("learning paused, store unavailable: %s", err)
            except Exception:
                log.exception("learning from the log failed; retrying")

    def _sync_loop(self) -> None:
        """Learn from other replicas' feedback; report the store's reachability as health."""
        serving = health_pb2.HealthCheckResponse.SERVING
        down = health_pb2.HealthCheckResponse.NOT_SERVING
        while not self._stopped.wait(SYNC_INTERVAL_SECONDS):
            try:
                self.arbiter.sync()
                status = serving
            except StoreUnavailable as err:
                log.warning("store unavailable: %s", err)
                status = down
            except Exception:
                log.exception("sync with the store failed; retrying")
                status = down
            if not self._stopped.is_set():
                for name in ("", SERVICE_NAME):
                    self.health.set(name, status)

    def stop(self, grace: float = 2.0, pre_stop: float = 0.0) -> None:
        """Report NOT_SERVING, wait ``pre_stop`` seconds (load balancers notice), then let
        in-flight requests finish for up to ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        if pre_stop > 0:
            time.sleep(pre_stop)
        self._stopped.set()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self.metrics is not None:
            self.metrics.close()
        self.arbiter.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(arbiter: Arbiter, host: str = "127.0.0.1", port: int = 50051,
          workers: int = 4, reloader: RulesetReloader | None = None,
          reload_interval: float = RELOAD_INTERVAL_SECONDS,
          metrics_port: int | None = None,
          credentials: grpc.ServerCredentials | None = None,
          tokens: Tokens | None = None,
          health_port: int | None = None) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one).

    With a ``reloader`` the ruleset directory is watched every ``reload_interval``
    seconds (0: only on the ReloadRuleset RPC). With ``metrics_port`` (0: a free one),
    Prometheus metrics are served on ``http://host:metrics_port/metrics``. With
    ``credentials`` the port speaks TLS (engine.grpc.security); with ``tokens`` every call
    but health and reflection needs a bearer token with the method's scope.
    """
    metrics = ServerMetrics(arbiter, reloader) if metrics_port is not None else None
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    interceptors: list[grpc.ServerInterceptor] = [TokenAuth(tokens)] if tokens else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         interceptors=interceptors)
    pb_grpc.add_DecisionServiceServicer_to_server(DecisionServicer(arbiter, metrics), server)
    apb_grpc.add_AdminServiceServicer_to_server(AdminServicer(arbiter, reloader, metrics),
                                                server)
    rpb_grpc.add_ReportServiceServicer_to_server(ReportServicer(arbiter, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, ADMIN_SERVICE_NAME, REPORT_SERVICE_NAME, health.SERVICE_NAME,
         reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    log.info("serving ruleset %s on %s:%d", arbiter.ruleset.revision, host, bound)
    running = RunningServer(server, bound, arbiter, health_servicer, reloader, reload_interval,
                            metrics)
    if health_port is not None:
        running.health_server, running.health_port = _health_server(health_servicer, host,
                                                                    health_port)
    if metrics is not None and metrics_port is not None:
        running.metrics_port = metrics.serve(metrics_port, host)
        log.info("metrics on http://%s:%d/metrics", host, running.metrics_port)
    return running


def _health_server(servicer: health.HealthServicer, host: str, port: int
                   ) -> tuple[grpc.Server, int]:
    """The health service alone, on its own port and threads: probes never queue behind
    requests that are stuck on the main port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (health)")
    server.start()
    log.info("health on %s:%d", host, bound)
    return server, bound


def serve_forever(running: RunningServer, grace: float = 2.0, pre_stop: float = 0.0) -> None:
    """Block until SIGINT/SIGTERM, then report NOT_SERVING, wait ``pre_stop`` seconds, and
    drain in-flight requests for up to ``grace`` seconds."""
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    done.wait()
    log.info("shutting down: pre-stop %.1fs, drain up to %.1fs", pre_stop, grace)
    running.stop(grace, pre_stop)
