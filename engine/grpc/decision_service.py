"""gRPC DecisionService: Decide, Feedback, TrackEvent, GetProfile, ForgetProfile."""

from __future__ import annotations

import grpc

from engine.decide.decision import Decision
from engine.grpc import convert
from engine.grpc.errors import rpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.requests import InvalidArgument
from engine.service import Arbiter

MAX_BATCH = 1000
"""Decisions per DecideBatch call."""


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, arbiter: Arbiter, metrics: ServerMetrics | None = None) -> None:
        self.arbiter = arbiter
        self.metrics = metrics

    @rpc
    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext
               ) -> pb.DecideResponse:
        return convert.decide_response(self._decide(request))

    @rpc
    def DecideBatch(self, request: pb.DecideBatchRequest, context: grpc.ServicerContext
                    ) -> pb.DecideBatchResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument("requests", f"at most {MAX_BATCH} per call")
        response = pb.DecideBatchResponse()
        for one in request.requests:
            try:
                decision = self._decide(one)
                if request.record_impressions and decision.actions and not decision.degraded:
                    self.arbiter.feedback(decision_id=decision.decision_id,
                                          action_id=decision.actions[0].action_id,
                                          outcome="impression")
            except InvalidArgument as err:
                response.results.append(pb.DecideBatchResult(error=str(err)))
                continue
            response.results.append(
                pb.DecideBatchResult(decision=convert.decide_response(decision)))
        return response

    def _decide(self, request: pb.DecideRequest) -> Decision:
        decision = self.arbiter.decide(
            user_id=request.user_id,
            placement=request.placement,
            channel=request.channel,
            context=convert.from_values("context", request.context),
            limit=request.limit,
            explain=request.explain,
            at=convert.optional_time(request, "at"),
        )
        if self.metrics is not None:
            self.metrics.decided(decision)
        return decision

    @rpc
    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext
                 ) -> pb.FeedbackResponse:
        outcome = convert.OUTCOME_NAMES.get(request.outcome)
        if outcome is None:
            raise InvalidArgument("outcome", "must be set (impression, click, conversion, "
                                             "dismiss)")
        commit = self.arbiter.feedback(
            decision_id=request.decision_id,
            action_id=request.action_id,
            outcome=outcome,
            value=request.value if request.HasField("value") else None,
            idempotency_key=request.idempotency_key,
            at=convert.optional_time(request, "timestamp"),
        )
        return pb.FeedbackResponse(duplicate=commit.duplicate)

    def _types(self) -> dict[str, str]:
        return {k: v.type for k, v in self.arbiter.ruleset.profile_schema.items()}

    @rpc
    def TrackEvent(self, request: pb.TrackEventRequest, context: grpc.ServicerContext
                   ) -> pb.TrackEventResponse:
        profile = self.arbiter.track(
            user_id=request.user_id,
            event_type=request.event_type,
            properties=convert.from_values("properties", request.properties),
            traits=convert.from_values("traits", request.traits),
            at=convert.optional_time(request, "timestamp"),
        )
        return pb.TrackEventResponse(
            profile=convert.profile_message(profile, self.arbiter.clock(), self._types()))

    @rpc
    def GetProfile(self, request: pb.GetProfileRequest, context: grpc.ServicerContext
                   ) -> pb.GetProfileResponse:
        profile = self.arbiter.get_profile(request.user_id)
        if profile is None:
            return pb.GetProfileResponse(found=False)
        return pb.GetProfileResponse(found=True, profile=convert.profile_message(
            profile, self.arbiter.clock(), self._types()))

    @rpc
    def ForgetProfile(self, request: pb.ForgetProfileRequest, context: grpc.ServicerContext
                      ) -> pb.ForgetProfileResponse:
        return pb.ForgetProfileResponse(deleted=self.arbiter.forget(request.user_id))
