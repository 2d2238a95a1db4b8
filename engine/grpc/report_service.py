"""gRPC ReportService: experiment and model reports, and their protobuf conversions."""

from __future__ import annotations

import grpc

from engine.experiments.posteriors import BetaPosterior, NormalGammaPosterior, Posterior
from engine.experiments.report import ArmReport, ExperimentReport, SampleRatio
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.grpc.gen.arbiter.v1 import report_pb2_grpc as rpb_grpc
from engine.learning.models import ModelQuality
from engine.service import Arbiter


def arm_to_proto(a: ArmReport) -> rpb.ArmReport:
    return rpb.ArmReport(arm=a.arm, exposures=a.exposures, rewards=a.rewards,
                         posterior_mean=a.mean, ci_low=a.ci[0], ci_high=a.ci[1],
                         prob_best=a.prob_best, expected_loss=a.expected_loss,
                         allocation=a.allocation, posterior=list(a.posterior))


def arm_from_proto(a: rpb.ArmReport) -> ArmReport:
    params = tuple(a.posterior)
    posterior: Posterior = (BetaPosterior(*params) if len(params) == 2
                            else NormalGammaPosterior(*params))
    return ArmReport(a.arm, a.exposures, a.rewards, posterior, (a.ci_low, a.ci_high),
                     a.prob_best, a.expected_loss, a.allocation)


def report_to_proto(r: ExperimentReport) -> rpb.ExperimentReportResponse:
    response = rpb.ExperimentReportResponse(
        experiment=r.experiment, placement=r.placement, allocation=r.allocation,
        reward=r.reward, posterior=r.posterior, arms=[arm_to_proto(a) for a in r.arms],
        holdout_percent=r.holdout_percent, best_arm=r.best_arm, winner=r.winner or "",
        revision=r.revision,
        srm=rpb.SampleRatioCheck(applies=r.srm.applies, p_value=r.srm.p_value,
                                 mismatch=r.srm.mismatch))
    if r.holdout is not None:
        response.holdout.CopyFrom(arm_to_proto(r.holdout))
    return response


def report_from_proto(p: rpb.ExperimentReportResponse) -> ExperimentReport:
    return ExperimentReport(
        experiment=p.experiment, placement=p.placement, allocation=p.allocation,
        reward=p.reward, posterior=p.posterior, arms=tuple(arm_from_proto(a) for a in p.arms),
        holdout=arm_from_proto(p.holdout) if p.HasField("holdout") else None,
        holdout_percent=p.holdout_percent,
        srm=SampleRatio(p.srm.applies, p.srm.p_value if p.srm.applies else 1.0),
        revision=p.revision, winner=p.winner or None)


def quality_to_proto(q: ModelQuality) -> rpb.ModelQuality:
    return rpb.ModelQuality(model=q.model, learner=q.learner, examples=q.examples,
                            rolling_auc=q.rolling_auc, rolling_log_loss=q.rolling_log_loss,
                            mean_predicted=q.mean_predicted, observed_rate=q.observed_rate)


def quality_from_proto(p: rpb.ModelQuality) -> ModelQuality:
    return ModelQuality(p.model, p.learner, p.examples, p.rolling_auc, p.rolling_log_loss,
                        p.mean_predicted, p.observed_rate)


class ReportServicer(rpb_grpc.ReportServiceServicer):
    def __init__(self, arbiter: Arbiter) -> None:
        self.arbiter = arbiter

    def ExperimentReport(self, request: rpb.ExperimentReportRequest,
                         context: grpc.ServicerContext) -> rpb.ExperimentReportResponse:
        name = request.experiment
        if name not in self.arbiter.ruleset.experiments:
            known = ", ".join(sorted(self.arbiter.ruleset.experiments)) or "none"
            context.abort(grpc.StatusCode.NOT_FOUND if name else
                          grpc.StatusCode.INVALID_ARGUMENT,
                          f"experiment: unknown experiment '{name}' (known: {known})")
        return report_to_proto(self.arbiter.experiment_report(name))

    def ModelReport(self, request: rpb.ModelReportRequest, context: grpc.ServicerContext
                    ) -> rpb.ModelReportResponse:
        return rpb.ModelReportResponse(
            models=[quality_to_proto(q) for q in self.arbiter.model_report()])
