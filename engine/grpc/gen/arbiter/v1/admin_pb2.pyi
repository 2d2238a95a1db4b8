import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Diagnostic(_message.Message):
    __slots__ = ("severity", "message", "file", "line", "column", "rendered")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    severity: str
    message: str
    file: str
    line: int
    column: int
    rendered: str
    def __init__(self, severity: _Optional[str] = ..., message: _Optional[str] = ..., file: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ..., rendered: _Optional[str] = ...) -> None: ...

class ReloadRulesetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadRulesetResponse(_message.Message):
    __slots__ = ("accepted", "changed", "serving", "diagnostics")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    changed: bool
    serving: RulesetInfo
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    def __init__(self, accepted: _Optional[bool] = ..., changed: _Optional[bool] = ..., serving: _Optional[_Union[RulesetInfo, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ...) -> None: ...

class GetRulesetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RulesetInfo(_message.Message):
    __slots__ = ("revision", "path", "loaded_at", "warnings", "rejected_revision", "rejected_diagnostics")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    revision: str
    path: str
    loaded_at: _timestamp_pb2.Timestamp
    warnings: _containers.RepeatedScalarFieldContainer[str]
    rejected_revision: str
    rejected_diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    def __init__(self, revision: _Optional[str] = ..., path: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., rejected_revision: _Optional[str] = ..., rejected_diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ...) -> None: ...
