"""Values written in files and on the command line, as the ruleset's schema declares them.

JSON has no time type and a flag is text, so a ``timestamp`` attribute is written as an
ISO 8601 date-time with its offset (TOML's own date-times are taken as they are) or as
epoch seconds; a ``list`` given on the command line is comma-separated. Anything else
is passed on as it is, for the schema check (``engine.requests.check_map``) to name a
mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine.requests import InvalidArgument

TIME_FORMS = "an ISO 8601 date-time with its offset (2026-01-20T09:00:00Z) or epoch seconds"


def as_declared(field: str, value: Any, kind: str | None) -> Any:
    """``value`` as an attribute of type ``kind`` (None: undeclared) is sent.

    >>> as_declared("traits.renewal", "2026-01-20T09:00:00+01:00", "timestamp")
    datetime.datetime(2026, 1, 20, 9, 0, tzinfo=datetime.timezone(datetime.timedelta(seconds=3600)))
    >>> as_declared("traits.renewal", 0, "timestamp")
    datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> as_declared("traits.renewal", "soon", "timestamp")
    Traceback (most recent call last):
    engine.requests.InvalidArgument: traits.renewal: must be an ISO 8601 date-time ...
    >>> as_declared("traits.name", "2026-01-20T09:00:00Z", "string")
    '2026-01-20T09:00:00Z'
    """
    if kind != "timestamp" or isinstance(value, datetime | bool):
        return value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidArgument(field, f"must be {TIME_FORMS}, not {value!r}") from None
        if when.tzinfo is None:
            raise InvalidArgument(field, f"must be {TIME_FORMS}: {value!r} has no offset")
        return when
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidArgument(field, f"must be {TIME_FORMS}: {value!r} is out of range"
                                  ) from None
    return value


def declared_map(field: str, values: Mapping[str, Any], schema: Mapping[str, Any] | None
                 ) -> dict[str, Any]:
    """Each value of ``values`` :func:`as_declared` by its attribute in ``schema``."""
    return {key: as_declared(f"{field}.{key}", value,
                             schema[key].type if schema is not None and key in schema else None)
            for key, value in values.items()}


def from_flag(field: str, raw: str, kind: str | None) -> Any:
    """A ``--context key=value`` value: typed by its declared ``kind``, else guessed
    (``true``/``false``, a number, an ISO date-time with its offset, text).

    >>> from_flag("context.tags", "a,b", "list"), from_flag("context.n", "3", None)
    (['a', 'b'], 3.0)
    >>> from_flag("context.since", "2026-01-20T09:00:00Z", None)
    datetime.datetime(2026, 1, 20, 9, 0, tzinfo=datetime.timezone.utc)
    """
    if kind == "string":
        return raw
    if kind == "list":
        return [part for part in raw.split(",") if part]
    if kind == "timestamp":
        try:
            seconds = float(raw)
        except ValueError:
            return as_declared(field, raw, kind)
        return as_declared(field, seconds, kind)
    if kind == "bool" and raw not in ("true", "false"):
        raise InvalidArgument(field, f"must be true or false, not {raw!r}")
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return float(raw)
    except ValueError:
        pass
    if kind is None and "T" in raw:
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            return raw
        return when if when.tzinfo is not None else raw
    return raw
