"""gRPC AdminService: which ruleset is serving; reload it (a thin layer over the reloader)."""

from __future__ import annotations

import grpc

from dsl.diagnostics import Diagnostic
from engine.grpc import convert
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.reloader import ReloadResult, RulesetReloader
from engine.service import Arbiter


def _diagnostic(d: Diagnostic, sources: dict[str, str]) -> apb.Diagnostic:
    return apb.Diagnostic(severity=d.severity, message=d.message, file=d.pos.file,
                          line=d.pos.line, column=d.pos.column, rendered=d.render(sources))


def _diagnostics(result: ReloadResult) -> list[apb.Diagnostic]:
    return [_diagnostic(d, result.sources) for d in result.diagnostics]


class AdminServicer(apb_grpc.AdminServiceServicer):
    def __init__(self, arbiter: Arbiter, reloader: RulesetReloader | None) -> None:
        self.arbiter = arbiter
        self.reloader = reloader

    def _info(self) -> apb.RulesetInfo:
        ruleset = self.arbiter.ruleset
        info = apb.RulesetInfo(revision=ruleset.revision, warnings=list(ruleset.warnings))
        if self.reloader is not None:
            info.path = str(self.reloader.path)
            info.loaded_at.CopyFrom(convert.timestamp(self.reloader.loaded_at))
            rejected = self.reloader.rejected
            if rejected is not None:
                info.rejected_revision = rejected.revision
                info.rejected_diagnostics.extend(_diagnostics(rejected))
        return info

    def GetRuleset(self, request: apb.GetRulesetRequest, context: grpc.ServicerContext
                   ) -> apb.RulesetInfo:
        return self._info()

    def ReloadRuleset(self, request: apb.ReloadRulesetRequest, context: grpc.ServicerContext
                      ) -> apb.ReloadRulesetResponse:
        if self.reloader is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this server was not started from a ruleset directory")
        assert self.reloader is not None
        result = self.reloader.reload()
        return apb.ReloadRulesetResponse(accepted=result.accepted, changed=result.changed,
                                         serving=self._info(),
                                         diagnostics=_diagnostics(result))
