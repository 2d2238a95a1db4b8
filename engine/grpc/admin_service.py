"""gRPC AdminService: which ruleset is serving; reload it (a thin layer over the reloader)."""

from __future__ import annotations

import grpc

from engine.grpc import convert
from engine.grpc.errors import DEFAULT_DEADLINE_SECONDS, rpc
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.offload import Offload
from engine.reloader import RulesetReloader
from engine.requests import FailedPrecondition
from engine.service import Arbiter


class AdminServicer(apb_grpc.AdminServiceServicer):
    def __init__(self, arbiter: Arbiter, reloader: RulesetReloader | None,
                 offload: Offload, metrics: ServerMetrics | None = None,
                 default_deadline: float = DEFAULT_DEADLINE_SECONDS) -> None:
        self.arbiter = arbiter
        self.offload = offload
        self.reloader = reloader
        self.metrics = metrics
        self.default_deadline = default_deadline  # a call without a deadline of its own

    def _info(self) -> apb.RulesetInfo:
        ruleset = self.arbiter.ruleset
        info = apb.RulesetInfo(revision=ruleset.revision, warnings=list(ruleset.warnings))
        if self.reloader is not None:
            info.path = str(self.reloader.path)
            info.loaded_at.CopyFrom(convert.timestamp(self.reloader.loaded_at))
            rejected = self.reloader.rejected
            if rejected is not None:
                info.rejected_revision = rejected.revision
                info.rejected_diagnostics.extend(convert.diagnostic_messages(rejected))
        return info

    @rpc
    async def GetRuleset(self, request: apb.GetRulesetRequest,
                         context: grpc.aio.ServicerContext) -> apb.RulesetInfo:
        return self._info()

    @rpc
    async def ReloadRuleset(self, request: apb.ReloadRulesetRequest,
                            context: grpc.aio.ServicerContext) -> apb.ReloadRulesetResponse:
        if self.reloader is None:
            raise FailedPrecondition("this server was not started from a ruleset directory")
        result = await self.offload.thread(self.reloader.reload)
        return apb.ReloadRulesetResponse(accepted=result.accepted, changed=result.changed,
                                         serving=self._info(),
                                         diagnostics=convert.diagnostic_messages(result))
