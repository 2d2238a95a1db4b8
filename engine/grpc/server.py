"""gRPC server: ``grpc.aio``, a thin translation layer over :class:`engine.service.Arbiter`.

One event loop serves every RPC. Decide runs on it (short synchronous decision work,
asynchronous store I/O); blocking store transactions run in a small thread pool
(:mod:`engine.grpc.offload`). Adds the standard ``grpc.health.v1`` health service and
server reflection (``grpc.reflection.v1`` and ``v1alpha``), so ``grpcurl`` and
``grpc_health_probe`` work without our proto files. Each RPC maps engine errors to
status codes and never lets an exception reach gRPC unlogged.

:func:`start` runs the loop in a thread of its own and returns a handle, so tests
and :func:`serve_forever` drive a server from ordinary synchronous code.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from engine.grpc import heap
from engine.grpc.admin_service import AdminServicer
from engine.grpc.catalogue_service import CatalogueServicer
from engine.grpc.decision_service import DecisionServicer
from engine.grpc.decoding import add_tolerant
from engine.grpc.errors import DEFAULT_DEADLINE_SECONDS
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.offload import Offload
from engine.grpc.report_service import ReportServicer
from engine.grpc.security import TokenAuth, Tokens
from engine.grpc.tracing import Tracing
from engine.ports import DecideIO
from engine.reloader import RulesetReloader
from engine.service import Arbiter
from engine.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AdminService"].full_name
REPORT_SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["ReportService"].full_name
CATALOGUE_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CatalogueService"].full_name
SERVED_NAMES = (SERVICE_NAME, ADMIN_SERVICE_NAME, REPORT_SERVICE_NAME, CATALOGUE_SERVICE_NAME)
"""Every service the main port serves: each has a readiness in the health service (a
probe may name any of them; they all need the store)."""
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
RELOAD_INTERVAL_SECONDS = 1.0
MAX_MESSAGE_BYTES = 1 << 20
MAX_PENDING_RPCS = 10_000  # calls received, not yet started (gRPC's default: 1,000)
MAX_CONNECTION_AGE_SECONDS = 300.0
CONNECTION_AGE_GRACE_MS = 60_000  # calls in flight on a connection closed for its age
CLIENT_PING_MIN_MS = 10_000  # clients' keepalive pings accepted this often
PING_IDLE_CONNECTIONS_MS, PING_TIMEOUT_MS = 60_000, 20_000


def connection_options(max_connection_age: float) -> list[tuple[str, int]]:
    """gRPC channel arguments for the server's connections.

    Clients' keepalive pings are accepted every 10 s even with no call in flight (gRPC's
    default, 5 minutes, answers a Java or Go client's 30 s keepalive with GOAWAY
    ``too_many_pings``); an idle connection is pinged every minute and closed when its
    peer does not answer within 20 s (a vanished client's connection would otherwise stay
    for TCP's two hours); with an age, a connection is closed with GOAWAY after about
    that long (gRPC adds ±10%; calls in flight get a minute to finish), so clients
    reconnect and the kernel (``SO_REUSEPORT``) or a load balancer spreads them anew.

    >>> dict(connection_options(0)).get("grpc.max_connection_age_ms") is None
    True
    >>> dict(connection_options(300))["grpc.max_connection_age_ms"]
    300000
    """
    options = [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_MIN_MS),
        ("grpc.keepalive_time_ms", PING_IDLE_CONNECTIONS_MS),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ]
    if max_connection_age > 0:
        options += [("grpc.max_connection_age_ms", max(1, round(max_connection_age * 1000))),
                    ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS)]
    return options
SYNC_INTERVAL_SECONDS = 1.0
READY_INTERVAL_SECONDS = 0.5
"""Readiness pings the store this often, and waits this long for its answer."""
LEARN_WAKE_SECONDS = 0.5
LEARN_GATHER_SECONDS = 0.05
"""After an event is logged, how long the learner waits for more before reading the log."""
LIVENESS_STALL_SECONDS = 30.0
"""Liveness (the ``--health-port`` service ``""``) fails once the event loop has not
turned for this long: a wedged process, which a restart cures. A store outage never
fails it (readiness says that)."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RunningServer:
    """A started server: its ports, and a stop that also stops the background loops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 arbiter: Arbiter, reloader: RulesetReloader | None,
                 offload: Offload, decide_io: DecideIO,
                 metrics: ServerMetrics | None) -> None:
        self.loop = loop
        self.thread = thread
        self.arbiter = arbiter
        self.reloader = reloader
        self.offload = offload
        self.decide_io = decide_io
        self.metrics = metrics
        self.tracing: Tracing | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        # the health service alone, on its own port and threads: it answers even while
        # the event loop is held (a pathological rule). Service "" is liveness (the loop
        # turned within LIVENESS_STALL_SECONDS), the servicer's name mirrors readiness
        self.probe_health = health.HealthServicer()
        self._loop_turned = time.monotonic()
        self.health_server: grpc.Server | None = None
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self.ready = True  # the store answered at start (readiness begins there)
        self._stopped = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unready = ThrottledLog(log, 30.0)

    # ---- background work (threads for blocking loops, tasks for the health state) ------
    def start_background(self, reload_interval: float) -> None:
        """Start the background loops: tasks on the event loop (scheduled from this
        thread with ``call_soon_threadsafe``, which wakes the loop; ``create_task`` from
        another thread would leave them queued until something else woke it, which an
        idle server's loop never is), threads for the blocking ones."""
        self.loop.call_soon_threadsafe(self._start_tasks)
        threading.Thread(target=self._learn_loop, name="arbiter-learn", daemon=True).start()
        threading.Thread(target=self._liveness_loop, name="arbiter-liveness",
                         daemon=True).start()
        if self.reloader is not None and reload_interval > 0:
            threading.Thread(target=self._watch_loop, args=(reload_interval,),
                             name="arbiter-reload", daemon=True).start()

    def _start_tasks(self) -> None:
        """(On the event loop.)"""
        if self._stopped.is_set():
            return
        self._tasks.append(self.loop.create_task(self._sync_loop()))
        self._tasks.append(self.loop.create_task(self._ready_loop()))

    def _watch_loop(self, interval: float) -> None:
        """Reload the ruleset when its files change (compiled here, off the request path)."""
        assert self.reloader is not None
        while not self._stopped.wait(interval):
            try:
                self.reloader.poll()
            except Exception:
                log.exception("ruleset reload failed; still serving %s",
                              self.arbiter.ruleset.revision)

    def _liveness_loop(self) -> None:
        """Liveness on the health port, off the event loop: NOT_SERVING while the loop has
        not turned for LIVENESS_STALL_SECONDS, SERVING again when it does."""
        alive = True
        while not self._stopped.wait(READY_INTERVAL_SECONDS):
            now = time.monotonic() - self._loop_turned < LIVENESS_STALL_SECONDS
            if now != alive and not self._stopped.is_set():
                if not now:
                    log.error("not live: the event loop has not turned for %.0fs",
                              LIVENESS_STALL_SECONDS)
                self.probe_health.set("", SERVING if now else NOT_SERVING)
                alive = now

    def _learn_loop(self) -> None:
        """Train the models soon after each feedback, off the request path."""
        logged = self.arbiter.feedback_logged
        while not self._stopped.is_set():
            if not logged.wait(LEARN_WAKE_SECONDS):
                continue
            # let events gather: under load one read of the log then carries many
            # (each read is a round trip, and learning waits for no request)
            if self._stopped.wait(LEARN_GATHER_SECONDS):
                break
            logged.clear()
            try:
                self.arbiter.learn()
            except Exception as err:  # StoreUnavailable included: retried next wake
                self._unready.warning("learn", "learning paused: %s", err)

    async def _sync_loop(self) -> None:
        """Every second, off the loop: other replicas' arm counters and feedback."""
        pending: asyncio.Future[int] | None = None
        while not self._stopped.is_set():
            await asyncio.sleep(SYNC_INTERVAL_SECONDS)
            if pending is not None and not pending.done():
                continue  # the store is slow: never two syncs at once
            pending = asyncio.ensure_future(self.offload.thread(self.arbiter.sync))
            pending.add_done_callback(self._synced)

    def _synced(self, done: asyncio.Future[int]) -> None:
        if not done.cancelled() and done.exception() is not None:
            self._unready.warning("sync", "sync with the store failed: %r", done.exception())

    async def _ready_loop(self) -> None:
        """Readiness: NOT_SERVING within a second of the store stopping to answer, SERVING
        again as soon as it does (a ping every half second, half a second to answer)."""
        status = SERVING if self.ready else NOT_SERVING
        while not self._stopped.is_set():
            await asyncio.sleep(READY_INTERVAL_SECONDS)
            self._loop_turned = time.monotonic()
            ready = await self.decide_io.ping(READY_INTERVAL_SECONDS)
            now = SERVING if ready else NOT_SERVING
            if now != status and not self._stopped.is_set():
                if not ready:
                    log.warning("not ready: the store did not answer a ping in %.1fs",
                                READY_INTERVAL_SECONDS)
                else:
                    log.info("ready: the store answers again")
                status = now
                await self.set_health(status)

    async def set_health(self, status: Any) -> None:
        """Readiness: ``""`` and every service's name on the main port, the services'
        names on the health port (whose ``""`` is liveness)."""
        for name in ("", *SERVED_NAMES):
            await self.health.set(name, status)
        for name in SERVED_NAMES:
            self.probe_health.set(name, status)

    # ---- stopping ----------------------------------------------------------------------
    def stop(self, grace: float = 2.0, pre_stop: float = 0.0) -> None:
        """Report NOT_SERVING, wait ``pre_stop`` seconds (load balancers notice), then let
        in-flight requests finish for up to ``grace`` seconds."""
        if self._stopped.is_set():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(grace, pre_stop), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            self.offload.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.tracing is not None:
                self.tracing.shutdown()
            self.arbiter.close()

    async def _stop(self, grace: float, pre_stop: float) -> None:
        await self.health.enter_graceful_shutdown()
        self.probe_health.enter_graceful_shutdown()
        if pre_stop > 0:
            await asyncio.sleep(pre_stop)
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            await self.server.stop(grace)
        if self.health_server is not None:
            self.health_server.stop(0)
        try:
            await self.decide_io.aclose()
        except Exception as err:  # a store that is gone: nothing to flush
            log.debug("closing the decide I/O: %r", err)

    def wait(self) -> None:
        self._stopped.wait()


def start(arbiter: Arbiter, host: str = "127.0.0.1", port: int = 50051,
          workers: int = 4, reloader: RulesetReloader | None = None,
          reload_interval: float = RELOAD_INTERVAL_SECONDS,
          metrics_port: int | None = None,
          credentials: grpc.ServerCredentials | None = None,
          tokens: Tokens | None = None,
          health_port: int | None = None,
          reuse_port: bool = False,
          default_deadline: float = DEFAULT_DEADLINE_SECONDS,
          tracing: Tracing | None = None,
          max_concurrent_rpcs: int | None = None,
          max_pending_rpcs: int = MAX_PENDING_RPCS,
          max_connection_age: float = MAX_CONNECTION_AGE_SECONDS) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one) on an event loop of its own.

    ``workers`` threads run blocking store transactions. With a ``reloader`` the ruleset
    directory is watched every ``reload_interval`` seconds (0: only on the ReloadRuleset
    RPC). With ``metrics_port`` (0: a free one), Prometheus metrics are served on
    ``http://host:metrics_port/metrics``. With ``credentials`` the port speaks TLS
    (engine.grpc.security); with ``tokens`` every call but health and reflection needs a
    bearer token with the method's scope. ``reuse_port`` lets several processes listen
    on one port (SO_REUSEPORT). An RPC whose client sets no deadline gets
    ``default_deadline`` seconds. With ``tracing``, OpenTelemetry spans (engine.grpc.tracing).
    Past ``max_concurrent_rpcs`` RPCs in progress, gRPC refuses new ones with
    ``RESOURCE_EXHAUSTED`` (None: no limit); the ``health_port`` server is not counted.
    Calls received but not yet started wait in gRPC's core, ``max_pending_rpcs`` at most
    (a burst of new connections); past it the core cancels new calls (``CANCELLED``).
    A connection is closed gracefully after about ``max_connection_age`` seconds (0:
    never), so that clients reconnect and spread over processes and replicas.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="arbiter-loop", daemon=True)
    thread.start()
    metrics = ServerMetrics(arbiter, reloader) if metrics_port is not None else None
    offload = Offload(arbiter.store.blocking, workers)
    running = RunningServer(loop, thread, arbiter, reloader, offload,
                            arbiter.store.decide_io(), metrics)
    running.tracing = tracing
    try:
        asyncio.run_coroutine_threadsafe(
            _start(running, host, port, credentials, tokens, health_port, reuse_port,
                   default_deadline, tracing, max_concurrent_rpcs, max_pending_rpcs,
                   max_connection_age), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        offload.close()
        raise
    heap.settle()  # the loaded ruleset, catalogue and models out of later collections
    if reloader is not None:
        reloader.on_swap.append(heap.settle)
    running.start_background(reload_interval)
    log.info("serving ruleset %s on %s:%d", arbiter.ruleset.revision, host, running.port)
    if metrics is not None and metrics_port is not None:
        try:
            running.metrics_port = metrics.serve(metrics_port, host)
        except OSError as err:
            running.stop(grace=0)
            raise OSError(f"cannot listen on {host}:{metrics_port} (metrics): "
                          f"{err.strerror or err}") from err
        log.info("metrics on http://%s:%d/metrics", host, running.metrics_port)
    return running


async def _start(running: RunningServer, host: str, port: int,
                 credentials: grpc.ServerCredentials | None, tokens: Tokens | None,
                 health_port: int | None, reuse_port: bool, default_deadline: float,
                 tracing: Tracing | None, max_concurrent_rpcs: int | None,
                 max_pending_rpcs: int, max_connection_age: float) -> None:
    arbiter, offload, metrics = running.arbiter, running.offload, running.metrics
    # decisions read arm counters fetched in the background, never on the loop
    await offload.thread(arbiter.decide_without_store_reads)
    options = [
        *connection_options(max_connection_age),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # gRPC's core sheds calls waiting to start past 1,000 by default (at random, as
        # CANCELLED with no detail): a burst of 1,500 new connections lost 15% of its
        # calls. One bound, no random band: soft limit = hard limit.
        ("grpc.server.max_pending_requests", max_pending_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", max_pending_rpcs),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tracing is not None:  # outermost: a refused token is traced too
        interceptors.append(tracing.interceptor())
    if tokens:
        interceptors.append(TokenAuth(tokens))
    server = grpc.aio.server(options=options, interceptors=interceptors,
                             maximum_concurrent_rpcs=max_concurrent_rpcs)
    store = arbiter.store
    timeout = float(getattr(store, "decide_timeout", 0.5))
    add_tolerant(pb_grpc.add_DecisionServiceServicer_to_server, DecisionServicer(
        arbiter, offload, running.decide_io, metrics, timeout, default_deadline, tracing),
        server)
    add_tolerant(apb_grpc.add_AdminServiceServicer_to_server,
                 AdminServicer(arbiter, running.reloader, offload, metrics, default_deadline),
                 server)
    add_tolerant(rpb_grpc.add_ReportServiceServicer_to_server,
                 ReportServicer(arbiter, offload, metrics, default_deadline), server)
    add_tolerant(pb_grpc.add_CatalogueServiceServicer_to_server,
                 CatalogueServicer(arbiter, offload, metrics, default_deadline), server)
    health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
    ready = await running.decide_io.ping(READY_INTERVAL_SECONDS)
    await running.set_health(SERVING if ready else NOT_SERVING)
    running.ready = ready
    _add_reflection(server, (*SERVED_NAMES, health.SERVICE_NAME))
    address = f"{host}:{port}"
    bound = _bind(lambda: (server.add_secure_port(address, credentials)
                           if credentials is not None else server.add_insecure_port(address)),
                  host, port, " (TLS: or its certificate and key do not load)"
                  if credentials is not None else "")
    await server.start()
    running.server, running.port = server, bound
    if health_port is not None:
        try:
            running.health_server, running.health_port = _health_server(
                running.probe_health, host, health_port)
        except OSError:
            await server.stop(0)
            raise


def _add_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Server reflection, v1alpha (grpcio-reflection) and v1. grpcio-reflection ships only
    v1alpha; v1's messages are the same on the wire (the package name is all that
    changed), so v1 is the same servicer under the v1 service name."""
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection_aio.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))


def _bind(add_port: Callable[[], int], host: str, port: int, what: str) -> int:
    """The bound port, or OSError naming the address (grpcio raises RuntimeError where it
    once returned 0: a port in use, or a host that is not this machine's)."""
    try:
        bound = add_port()
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: the port is in use, or the host "
                      f"is not an address of this machine{what}")
    return bound


def _health_server(servicer: health.HealthServicer, host: str, port: int
                   ) -> tuple[grpc.Server, int]:
    """The health service alone, on its own port and threads (a synchronous server): it
    answers even while the event loop is held, and no token stands in front of it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = _bind(lambda: server.add_insecure_port(f"{host}:{port}"), host, port,
                  " (--health-port)")
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
    while not done.wait(1.0):
        pass
    log.info("shutting down: pre-stop %.1fs, drain up to %.1fs", pre_stop, grace)
    started = time.monotonic()
    running.stop(grace, pre_stop)
    log.info("stopped in %.1fs", time.monotonic() - started)
