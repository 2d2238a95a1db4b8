"""Protobuf messages ↔ engine values: every conversion the servicers and the CLI need.

The only place, with the generated code and the servicers, that knows protobuf.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from dsl.diagnostics import Diagnostic
from dsl.vocabulary import ReasonKind
from engine.decide.contacts import contact_entries
from engine.decide.decision import ActionTrace, Decision, RankedAction, Reason, RecommendedItem
from engine.experiments.posteriors import BetaPosterior, NormalGammaPosterior, Posterior
from engine.experiments.report import ArmReport, ExperimentReport, SampleRatio
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import report_pb2 as rpb
from engine.learning.quality import ModelQuality
from engine.records import CorruptRecord, Profile
from engine.reloader import ReloadResult
from engine.requests import MAX_MAP_ENTRIES, MAX_STRING_LENGTH, InvalidArgument

MAX_KEY_LENGTH = 256
"""Characters in a map key (context, traits, properties and string maps)."""

OUTCOME_NAMES = {
    pb.OUTCOME_IMPRESSION: "impression",
    pb.OUTCOME_CLICK: "click",
    pb.OUTCOME_CONVERSION: "conversion",
    pb.OUTCOME_DISMISS: "dismiss",
}
OUTCOME_ENUMS = {name: enum for enum, name in OUTCOME_NAMES.items()}


TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
TIMESTAMP_RANGE = ("must be a google.protobuf.Timestamp between 0001-01-01T00:00:00Z and "
                   "9999-12-31T23:59:59.999999999Z")


def seconds(ts: Timestamp, field: str = "timestamp") -> float:
    """Epoch seconds of a Timestamp; INVALID_ARGUMENT naming ``field`` outside the range
    ``google/protobuf/timestamp.proto`` defines (or with nanos outside 0..999,999,999).

    >>> seconds(Timestamp(seconds=10, nanos=500_000_000))
    10.5
    >>> seconds(Timestamp(seconds=2**62), "context.when")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    engine.requests.InvalidArgument: context.when: must be a google.protobuf.Timestamp ...
    """
    if not (TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS
            and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgument(field, TIMESTAMP_RANGE)
    return ts.seconds + ts.nanos / 1e9


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


def from_value(field: str, value: pb.Value) -> Any:
    """A wire value as Python, checked once here for every RPC: finite numbers,
    timestamps in range, strings, lists and maps within their sizes (INVALID_ARGUMENT
    naming ``field`` otherwise)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "value has no kind set")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(field, "must be a finite number")
        return value.number_value
    if kind == "timestamp_value":
        ts = value.timestamp_value
        seconds(ts, field)  # the range check; the datetime is built exactly (no float
        # rounding past 9999-12-31T23:59:59.999999)
        return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)
    if kind == "string_value":
        return _string(field, value.string_value)
    if kind == "string_list":
        items = value.string_list.values
        if len(items) > MAX_MAP_ENTRIES:
            raise InvalidArgument(field, f"has more than {MAX_MAP_ENTRIES} items")
        return [_string(f"{field}[{i}]", item) for i, item in enumerate(items)]
    if kind == "string_map":
        return _checked_map(field, value.string_map.entries, _string)
    if kind == "null_value":  # a trait removed (anywhere else, the request check refuses it)
        return None
    return getattr(value, kind)


def _string(field: str, text: str) -> str:
    if len(text) > MAX_STRING_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_STRING_LENGTH} characters")
    return text


def _checked_map(field: str, entries: Mapping[str, Any],
                 convert: Callable[[str, Any], Any]) -> dict[str, Any]:
    if len(entries) > MAX_MAP_ENTRIES:
        raise InvalidArgument(field, f"has more than {MAX_MAP_ENTRIES} entries")
    out = {}
    for key, item in entries.items():
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument(field, f"has a key longer than {MAX_KEY_LENGTH} characters")
        out[key] = convert(f"{field}.{key}", item)
    return out


def from_values(field: str, values: Mapping[str, pb.Value]) -> dict[str, Any]:
    """A map of wire values (``context``, ``traits``, ``properties``), checked."""
    return _checked_map(field, values, from_value)


def to_value(value: Any, kind: str | None = None) -> pb.Value:
    """A wire value for a Python (or JSON) value; a list's items and a map's values must
    be strings (the DSL's ``list`` and ``map``): anything else raises ValueError rather
    than be sent as its Python spelling (``True``, ``None``, ``{'a': 1}``).

    >>> to_value(["card", "savings"]).string_list.values
    ['card', 'savings']
    >>> to_value({"newsletter": False})
    Traceback (most recent call last):
    ValueError: a map's values are strings, not false (newsletter)
    """
    if value is None:
        return pb.Value(null_value="NULL_VALUE")
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int | float):
        if kind == "timestamp":
            return pb.Value(timestamp_value=timestamp(float(value)))
        return pb.Value(number_value=float(value))
    if isinstance(value, datetime):
        return pb.Value(timestamp_value=timestamp(value.timestamp()))
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"a list's items are strings, not {_json(item)}")
        return pb.Value(string_list=pb.StringList(values=value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(item, str):
                raise ValueError(f"a map's values are strings, not {_json(item)} ({key})")
        return pb.Value(string_map=pb.StringMap(entries=value))
    return pb.Value(string_value=str(value))


def _json(value: Any) -> str:
    """How a value reads in the JSON it came from, for an error message."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:40]
    except ValueError:
        return repr(value)[:40]


def optional_time(message: Any, field: str) -> float | None:
    """A request's own optional Timestamp field, range-checked (None when unset)."""
    return seconds(getattr(message, field), field) if message.HasField(field) else None


def _reason(r: Reason) -> pb.Reason:
    return pb.Reason(kind=r.kind, name=r.name, passed=r.passed, detail=r.detail,
                     location=r.location)


def decide_response(decision: Decision) -> pb.DecideResponse:
    response = pb.DecideResponse()
    fill_decide_response(response, decision)
    return response


def fill_decide_response(response: pb.DecideResponse, decision: Decision) -> None:
    """Write the decision into ``response`` in place (DecideBatch fills its results
    without copying each one)."""
    response.decision_id = decision.decision_id
    response.ruleset_revision = decision.revision
    response.channel = decision.channel
    nanos = int(decision.decided_at * 1e9)  # FromNanoseconds is Python; this is two sets
    decided_at = response.decided_at  # (each read of a sub-message makes a wrapper)
    decided_at.seconds, decided_at.nanos = divmod(nanos, 1_000_000_000)
    if decision.holdout:
        response.holdout_experiment = decision.holdout
    if decision.degraded:
        response.degraded = True
    if decision.best_send_at is not None:
        response.best_send_at.seconds = int(decision.best_send_at)
    for a in decision.actions:
        # field by field, empty ones left out (no field here has presence, so the bytes
        # are the same): a third cheaper than add(**fields) with the content map
        action = response.actions.add()
        action.action_id, action.rank, action.score = a.action_id, a.rank, a.score
        action.propensity, action.value, action.weight = a.propensity, a.value, a.weight
        action.probability = a.probability
        if a.experiment:
            action.experiment = a.experiment
        if a.arm:
            action.arm = a.arm
        if a.content:
            content = action.content
            for key, text in a.content.items():  # (cheaper than update() on a map)
                content[key] = text
        if a.tags:
            action.tags.extend(a.tags)
        if a.reasons:
            action.reasons.extend(_reason(r) for r in a.reasons)
        if a.score_terms:
            action.score_terms.extend(pb.ScoreTerm(name=k, value=v)
                                      for k, v in a.score_terms.items())
        if a.items:
            action.items.extend(pb.RecommendedItem(item_id=i.item_id, score=i.score,
                                                   reason=i.reason) for i in a.items)
    if decision.traces:
        response.explanation.segments.extend(decision.segments)
        for t in decision.traces:
            response.explanation.candidates.append(pb.ActionTrace(
                action_id=t.action_id, eligible=t.eligible,
                reasons=[_reason(r) for r in t.reasons]))


def decision_from_response(response: pb.DecideResponse, user_id: str, placement: str,
                           channel: str) -> Decision:
    """The client-side view of a response, for printing (``arbiter decide --target``)."""

    def reasons(items: Any) -> list[Reason]:
        return [Reason(ReasonKind(r.kind), r.name, r.passed, r.detail, r.location)
                for r in items]

    actions = tuple(
        RankedAction(a.action_id, a.score, a.propensity, a.value, a.weight, 0, rank=a.rank,
                     experiment=a.experiment or None, arm=a.arm or None,
                     content=dict(a.content), reasons=reasons(a.reasons),
                     score_terms={t.name: t.value for t in a.score_terms},
                     tags=tuple(a.tags), probability=a.probability,
                     items=tuple(RecommendedItem(i.item_id, i.score, i.reason, {})
                                 for i in a.items))
        for a in response.actions
    )
    traces = tuple(ActionTrace(t.action_id, t.eligible, tuple(reasons(t.reasons)))
                   for t in response.explanation.candidates)
    return Decision(response.decision_id, response.ruleset_revision,
                    seconds(response.decided_at), user_id, placement,
                    response.channel or channel, actions,
                    tuple(response.explanation.segments), traces,
                    response.holdout_experiment or None, degraded=response.degraded,
                    best_send_at=(seconds(response.best_send_at)
                                  if response.HasField("best_send_at") else None))


def profile_message(profile: Profile, now: float,
                    types: Mapping[str, str] | None = None,
                    learnt: Mapping[str, float] | None = None) -> pb.Profile:
    """A profile for GetProfile: attributes, event aggregates, contact history.

    A stored profile that decodes but holds a value no request could have written (a
    time outside Timestamp's range, after damage in the store) is a CorruptRecord."""
    try:
        message = _profile_message(profile, now, types)
        if learnt:
            message.learnt.update(learnt)
        return message
    except (ValueError, OverflowError) as err:
        raise CorruptRecord("user_id", "profile", f"a stored value is out of range: {err}"
                            ) from None


def _profile_message(profile: Profile, now: float,
                     types: Mapping[str, str] | None) -> pb.Profile:
    from dsl.runtime import count_within

    message = pb.Profile(user_id=profile.user_id)
    for name, value in profile.attributes.items():
        if value is not None:
            message.attributes[name].CopyFrom(to_value(value, (types or {}).get(name)))
    for event_type, stats in sorted(profile.events.items()):
        message.events.append(pb.EventAggregate(
            event_type=event_type, count=stats.count, total_value=stats.total,
            first_at=timestamp(stats.first_at), last_at=timestamp(stats.last_at),
            count_24h=int(count_within(stats, now, 86400.0)),
            count_7d=int(count_within(stats, now, 7 * 86400.0)),
            count_30d=int(count_within(stats, now, 30 * 86400.0)),
        ))
    for action_id, history in sorted(profile.contacts.items()):
        entries = contact_entries(history)
        outcomes = [outcome for _, outcome, _ in entries]
        message.contacts.append(pb.ContactAggregate(
            action_id=action_id,
            impressions=outcomes.count("impression"), clicks=outcomes.count("click"),
            conversions=outcomes.count("conversion"), dismissals=outcomes.count("dismiss"),
            last_at=timestamp(entries[-1][0]) if entries else None,
        ))
    for at, item_id, event in profile.items:
        message.items.append(pb.ItemInteraction(item_id=item_id, event=event,
                                                at=timestamp(at)))
    if profile.first_seen is not None:
        message.first_seen.CopyFrom(timestamp(profile.first_seen))
    if profile.last_seen is not None:
        message.last_seen.CopyFrom(timestamp(profile.last_seen))
    return message


# ---- reports -----------------------------------------------------------------------
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
                                 mismatch=r.srm.mismatch, since_change=r.srm.since_change))
    if r.holdout is not None:
        response.holdout.CopyFrom(arm_to_proto(r.holdout))
    return response


def report_from_proto(p: rpb.ExperimentReportResponse) -> ExperimentReport:
    return ExperimentReport(
        experiment=p.experiment, placement=p.placement, allocation=p.allocation,
        reward=p.reward, posterior=p.posterior, arms=tuple(arm_from_proto(a) for a in p.arms),
        holdout=arm_from_proto(p.holdout) if p.HasField("holdout") else None,
        holdout_percent=p.holdout_percent,
        srm=SampleRatio(p.srm.applies, p.srm.p_value if p.srm.applies else 1.0,
                        p.srm.since_change),
        revision=p.revision, winner=p.winner or None)


def quality_to_proto(q: ModelQuality) -> rpb.ModelQuality:
    return rpb.ModelQuality(model=q.model, learner=q.learner, examples=q.examples,
                            rolling_auc=q.rolling_auc, rolling_log_loss=q.rolling_log_loss,
                            mean_predicted=q.mean_predicted, observed_rate=q.observed_rate,
                            metrics=q.metrics)


def quality_from_proto(p: rpb.ModelQuality) -> ModelQuality:
    return ModelQuality(p.model, p.learner, p.examples, p.rolling_auc, p.rolling_log_loss,
                        p.mean_predicted, p.observed_rate, dict(p.metrics))


# ---- rulesets ----------------------------------------------------------------------
def diagnostic_message(d: Diagnostic, sources: dict[str, str]) -> apb.Diagnostic:
    return apb.Diagnostic(severity=d.severity, message=d.message, file=d.pos.file,
                          line=d.pos.line, column=d.pos.column, rendered=d.render(sources))


def diagnostic_messages(result: ReloadResult) -> list[apb.Diagnostic]:
    return [diagnostic_message(d, result.sources) for d in result.diagnostics]
