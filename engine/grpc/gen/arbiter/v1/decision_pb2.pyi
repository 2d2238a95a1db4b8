import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_IMPRESSION: _ClassVar[Outcome]
    OUTCOME_CLICK: _ClassVar[Outcome]
    OUTCOME_CONVERSION: _ClassVar[Outcome]
    OUTCOME_DISMISS: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_IMPRESSION: Outcome
OUTCOME_CLICK: Outcome
OUTCOME_CONVERSION: Outcome
OUTCOME_DISMISS: Outcome

class Item(_message.Message):
    __slots__ = ("id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class RemoveItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CatalogueResponse(_message.Message):
    __slots__ = ("version", "items", "not_found")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    version: int
    items: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., items: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value", "timestamp_value", "string_list", "string_map", "null_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_FIELD_NUMBER: _ClassVar[int]
    STRING_MAP_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    string_list: StringList
    string_map: StringMap
    null_value: _struct_pb2.NullValue
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., string_list: _Optional[_Union[StringList, _Mapping]] = ..., string_map: _Optional[_Union[StringMap, _Mapping]] = ..., null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ...) -> None: ...

class StringMap(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.ScalarMap[str, str]
    def __init__(self, entries: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("requests", "record_impressions")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RECORD_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecideRequest]
    record_impressions: bool
    def __init__(self, requests: _Optional[_Iterable[_Union[DecideRequest, _Mapping]]] = ..., record_impressions: _Optional[bool] = ...) -> None: ...

class DecideBatchResult(_message.Message):
    __slots__ = ("decision", "error", "status")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    decision: DecideResponse
    error: str
    status: str
    def __init__(self, decision: _Optional[_Union[DecideResponse, _Mapping]] = ..., error: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DecideBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DecideBatchResult, _Mapping]]] = ...) -> None: ...

class TrackEventBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackEventRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[TrackEventRequest, _Mapping]]] = ...) -> None: ...

class TrackEventBatchResult(_message.Message):
    __slots__ = ("duplicate", "status", "error")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    status: str
    error: str
    def __init__(self, duplicate: _Optional[bool] = ..., status: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class TrackEventBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TrackEventBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TrackEventBatchResult, _Mapping]]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("user_id", "placement", "channel", "context", "limit", "explain", "at", "request_id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    placement: str
    channel: str
    context: _containers.MessageMap[str, Value]
    limit: int
    explain: bool
    at: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., placement: _Optional[str] = ..., channel: _Optional[str] = ..., context: _Optional[_Mapping[str, Value]] = ..., limit: _Optional[int] = ..., explain: _Optional[bool] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("kind", "name", "passed", "detail", "location")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    passed: bool
    detail: str
    location: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class ScoreTerm(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class RankedAction(_message.Message):
    __slots__ = ("action_id", "rank", "score", "propensity", "value", "weight", "experiment", "arm", "content", "reasons", "score_terms", "tags", "probability", "items")
    class ContentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TERMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    rank: int
    score: float
    propensity: float
    value: float
    weight: float
    experiment: str
    arm: str
    content: _containers.ScalarMap[str, str]
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    score_terms: _containers.RepeatedCompositeFieldContainer[ScoreTerm]
    tags: _containers.RepeatedScalarFieldContainer[str]
    probability: float
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    def __init__(self, action_id: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., value: _Optional[float] = ..., weight: _Optional[float] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., content: _Optional[_Mapping[str, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., score_terms: _Optional[_Iterable[_Union[ScoreTerm, _Mapping]]] = ..., tags: _Optional[_Iterable[str]] = ..., probability: _Optional[float] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class ActionTrace(_message.Message):
    __slots__ = ("action_id", "eligible", "reasons")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    eligible: bool
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, action_id: _Optional[str] = ..., eligible: _Optional[bool] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("segments", "candidates")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[ActionTrace]
    def __init__(self, segments: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[ActionTrace, _Mapping]]] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "ruleset_revision", "actions", "explanation", "decided_at", "holdout_experiment", "degraded", "best_send_at", "channel", "duplicate")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    RULESET_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    BEST_SEND_AT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    ruleset_revision: str
    actions: _containers.RepeatedCompositeFieldContainer[RankedAction]
    explanation: Explanation
    decided_at: _timestamp_pb2.Timestamp
    holdout_experiment: str
    degraded: bool
    best_send_at: _timestamp_pb2.Timestamp
    channel: str
    duplicate: bool
    def __init__(self, decision_id: _Optional[str] = ..., ruleset_revision: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[RankedAction, _Mapping]]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., holdout_experiment: _Optional[str] = ..., degraded: _Optional[bool] = ..., best_send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("decision_id", "action_id", "outcome", "value", "idempotency_key", "timestamp", "item_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    action_id: str
    outcome: Outcome
    value: float
    idempotency_key: str
    timestamp: _timestamp_pb2.Timestamp
    item_id: str
    def __init__(self, decision_id: _Optional[str] = ..., action_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., value: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., item_id: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class TrackEventRequest(_message.Message):
    __slots__ = ("user_id", "event_type", "properties", "timestamp", "traits", "item_id", "event_id")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class TraitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    event_type: str
    properties: _containers.MessageMap[str, Value]
    timestamp: _timestamp_pb2.Timestamp
    traits: _containers.MessageMap[str, Value]
    item_id: str
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., event_type: _Optional[str] = ..., properties: _Optional[_Mapping[str, Value]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traits: _Optional[_Mapping[str, Value]] = ..., item_id: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class TrackEventResponse(_message.Message):
    __slots__ = ("profile", "duplicate")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    duplicate: bool
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class EventAggregate(_message.Message):
    __slots__ = ("event_type", "count", "total_value", "first_at", "last_at", "count_24h", "count_7d", "count_30d")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    FIRST_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    COUNT_24H_FIELD_NUMBER: _ClassVar[int]
    COUNT_7D_FIELD_NUMBER: _ClassVar[int]
    COUNT_30D_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    count: int
    total_value: float
    first_at: _timestamp_pb2.Timestamp
    last_at: _timestamp_pb2.Timestamp
    count_24h: int
    count_7d: int
    count_30d: int
    def __init__(self, event_type: _Optional[str] = ..., count: _Optional[int] = ..., total_value: _Optional[float] = ..., first_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count_24h: _Optional[int] = ..., count_7d: _Optional[int] = ..., count_30d: _Optional[int] = ...) -> None: ...

class ContactAggregate(_message.Message):
    __slots__ = ("action_id", "impressions", "clicks", "conversions", "dismissals", "last_at")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    DISMISSALS_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    impressions: int
    clicks: int
    conversions: int
    dismissals: int
    last_at: _timestamp_pb2.Timestamp
    def __init__(self, action_id: _Optional[str] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., conversions: _Optional[int] = ..., dismissals: _Optional[int] = ..., last_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ItemInteraction(_message.Message):
    __slots__ = ("item_id", "event", "at")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., event: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("user_id", "attributes", "events", "contacts", "first_seen", "last_seen", "items", "learnt")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class LearntEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LEARNT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    attributes: _containers.MessageMap[str, Value]
    events: _containers.RepeatedCompositeFieldContainer[EventAggregate]
    contacts: _containers.RepeatedCompositeFieldContainer[ContactAggregate]
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    items: _containers.RepeatedCompositeFieldContainer[ItemInteraction]
    learnt: _containers.ScalarMap[str, float]
    def __init__(self, user_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ..., events: _Optional[_Iterable[_Union[EventAggregate, _Mapping]]] = ..., contacts: _Optional[_Iterable[_Union[ContactAggregate, _Mapping]]] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., items: _Optional[_Iterable[_Union[ItemInteraction, _Mapping]]] = ..., learnt: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("found", "profile")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    profile: Profile
    def __init__(self, found: _Optional[bool] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class ForgetProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetProfileResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
