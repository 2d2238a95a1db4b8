"""OpenTelemetry traces (the ``otel`` extra; off unless ``arbiter serve --otel-exporter``).

Every RPC gets a server span (OpenTelemetry's gRPC instrumentation, which also
continues a caller's trace from its ``traceparent``). Inside Decide: a span for the
profile read, one for the decision with a child span per stage (segments, scoring,
allocation, ranking, content), and one for the record write; other RPCs get a span
around their store transaction. Attributes name the placement, actions, arm and
revision, never the customer. Sampling follows the standard ``OTEL_TRACES_SAMPLER``
variables; an unsampled request costs one ``is_recording()`` check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from engine.decide.decision import Decision
from engine.decide.tracer import Tracer

EXPORTERS = ("none", "console", "otlp")


class Tracing:
    """Spans for the servicers, on a tracer provider (the SDK's, or the global one)."""

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.provider = provider
        self.tracer = trace.get_tracer("arbiter", tracer_provider=provider)

    def interceptor(self) -> Any:
        """The grpc.aio server interceptor that opens each RPC's span."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return aio_server_interceptor(tracer_provider=self.provider)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def stages(self) -> StageSpans | None:
        """A decision tracer that opens a span per stage, when this request is sampled."""
        if not self._trace.get_current_span().is_recording():
            return None
        return StageSpans(self.tracer)

    @staticmethod
    def describe(span: Any, decision: Decision) -> None:
        """What was decided, on the decision's span (no user id, no profile)."""
        if not span.is_recording():
            return
        span.set_attribute("arbiter.placement", decision.placement)
        span.set_attribute("arbiter.revision", decision.revision)
        span.set_attribute("arbiter.actions", [a.action_id for a in decision.actions])
        span.set_attribute("arbiter.arms", [a.arm or "" for a in decision.actions])
        span.set_attribute("arbiter.degraded", decision.degraded)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class StageSpans(Tracer):
    """Listens to a decision's stages: one child span each, ended when the next begins."""

    enabled = True

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.current: Any = None

    def stage(self, name: str) -> None:
        if self.current is not None:
            self.current.end()
            self.current = None
        if name:
            self.current = self.tracer.start_span(f"decide.{name}")

    def finish(self) -> None:
        self.stage("")


def tracing_from(exporter: str, service_name: str = "arbiter") -> Tracing | None:
    """A :class:`Tracing` exporting to ``console`` or ``otlp`` (endpoint and headers from
    the standard ``OTEL_EXPORTER_OTLP_*`` variables); None for ``none``. ImportError
    names the extra to install."""
    if exporter == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as err:
        raise ImportError("tracing needs the otel extra: pip install 'arbiter-nba[otel]'"
                          ) from err
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as err:
            raise ImportError("the otlp exporter needs the otel extra: "
                              "pip install 'arbiter-nba[otel]'") from err
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    return Tracing(provider)
