"""gRPC ReportService: experiment and model reports (a thin layer over the Arbiter)."""

from __future__ import annotations

import grpc

from engine.grpc import convert
from engine.grpc.errors import DEFAULT_DEADLINE_SECONDS, rpc
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.offload import Offload
from engine.requests import InvalidArgument, NotFound
from engine.service import Arbiter


class ReportServicer(rpb_grpc.ReportServiceServicer):
    def __init__(self, arbiter: Arbiter, offload: Offload,
                 metrics: ServerMetrics | None = None,
                 default_deadline: float = DEFAULT_DEADLINE_SECONDS) -> None:
        self.arbiter = arbiter
        self.offload = offload
        self.metrics = metrics
        self.default_deadline = default_deadline  # a call without a deadline of its own

    @rpc
    async def ExperimentReport(self, request: rpb.ExperimentReportRequest,
                               context: grpc.aio.ServicerContext) -> rpb.ExperimentReportResponse:
        name = request.experiment
        experiments = self.arbiter.ruleset.experiments
        if name not in experiments:
            known = ", ".join(sorted(experiments)) or "none"
            error = NotFound if name else InvalidArgument
            raise error("experiment", f"unknown experiment '{name}' (known: {known})")
        # on a worker thread whatever the store: P(best) and the intervals are sampled
        # (milliseconds of CPU the loop's other calls would wait behind)
        return convert.report_to_proto(
            await self.offload.thread(self.arbiter.experiment_report, name))

    @rpc
    async def ModelReport(self, request: rpb.ModelReportRequest,
                          context: grpc.aio.ServicerContext) -> rpb.ModelReportResponse:
        qualities = await self.offload.thread(self.arbiter.model_report)
        return rpb.ModelReportResponse(models=[convert.quality_to_proto(q) for q in qualities])
