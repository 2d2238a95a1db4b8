"""Raw requests → checked inputs. Every rejection names the offending field.

Values in context, property and trait maps are plain Python: ``str``, ``int`` or
``float`` (number), ``bool``, or an aware ``datetime`` (timestamp). Context keys
and traits must be declared in the ruleset with a matching type: an undeclared
key is rejected rather than ignored, because a rule reading a misspelt key would
silently see a missing value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dsl.ruleset import Ruleset
from dsl.runtime import is_zone
from dsl.schema import FieldSpec
from dsl.vocabulary import OUTCOMES
from engine.decide.inputs import DecideInput
from engine.records import AttrValue

MAX_ID_LENGTH = 256
MAX_MAP_ENTRIES = 64
MAX_STRING_LENGTH = 4096
MAX_LIMIT = 100
MAX_FUTURE_SECONDS = 300.0
MAX_DECIDE_AHEAD_SECONDS = 366 * 86400.0
"""How far ahead a Decide's ``at`` may be (a send scheduled for later): a decision's record
and its feedback window run from its own time, so a time centuries ahead (a client's bug)
would keep its record for as long."""
NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class InvalidArgument(ValueError):
    """A request field is missing, malformed or too large."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class TrackInput:
    user_id: str
    event_type: str
    value: float
    at: float
    traits: dict[str, AttrValue]
    item_id: str = ""  # the catalogue item the event is about (recommendations)
    event_id: str = ""  # the client's id of the event: a retry with it is applied once


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, list | tuple):
        return "list"  # (of strings: check_value says so otherwise)
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def check_id(field: str, value: str) -> str:
    """An id as given, or InvalidArgument naming ``field``: empty, too long, or not
    text that can be stored (a lone surrogate, which gRPC never delivers but a caller
    in process can pass).

    >>> check_id("user_id", "ann" + chr(0xD800))
    Traceback (most recent call last):
    engine.requests.InvalidArgument: user_id: is not valid Unicode text (a lone surrogate)
    """
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_ID_LENGTH} characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(field, "is not valid Unicode text (a lone surrogate)"
                                  ) from None
    return value


def check_value(field: str, value: Any, want: str | None = None,
                removable: bool = False) -> AttrValue:
    """A map value as stored: timestamps become epoch seconds; NaN/inf rejected; None (a
    trait removed) only where ``removable``."""
    kind = _kind(value)
    if kind == "null":
        if not removable:
            raise InvalidArgument(field, "null only removes a trait; leave the key out")
        return None
    if kind not in ("bool", "number", "string", "timestamp", "list", "map"):
        raise InvalidArgument(field, f"unsupported value type {kind}")
    if want is not None and kind != want:
        raise InvalidArgument(field, f"must be a {want}, got a {kind}")
    if kind == "string" and len(value) > MAX_STRING_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_STRING_LENGTH} characters")
    if kind == "list":
        if not all(isinstance(v, str) for v in value):
            raise InvalidArgument(field, "a list's items are strings")
        if len(value) > MAX_MAP_ENTRIES or any(len(v) > MAX_STRING_LENGTH for v in value):
            raise InvalidArgument(field, f"list is longer than {MAX_MAP_ENTRIES} items or has "
                                         "an item that is too long")
        return list(value)
    if kind == "map":
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise InvalidArgument(field, "a map's keys and values are strings")
        if len(value) > MAX_MAP_ENTRIES or any(
                len(k) > MAX_STRING_LENGTH or len(v) > MAX_STRING_LENGTH
                for k, v in value.items()):
            raise InvalidArgument(field, f"map has more than {MAX_MAP_ENTRIES} entries or an "
                                         "entry that is too long")
        return dict(value)
    if kind == "timestamp":
        if value.tzinfo is None:
            raise InvalidArgument(field, "timestamp needs a time zone")
        return value.timestamp()
    if kind == "number":
        if not math.isfinite(value):
            raise InvalidArgument(field, "must be a finite number")
        return float(value)
    return value


def check_map(field: str, values: Mapping[str, Any], schema: Mapping[str, FieldSpec] | None,
              block: str = "", removable: bool = False) -> dict[str, AttrValue]:
    """Check a context/trait/property map against its schema (None: any keys); a None
    value (a trait to remove) is allowed where ``removable``.

    >>> check_map("traits", {"tier": None}, None, removable=True)
    {'tier': None}
    >>> check_map("context", {"tier": None}, None)
    Traceback (most recent call last):
    engine.requests.InvalidArgument: context.tier: null only removes a trait; leave the key out
    """
    if len(values) > MAX_MAP_ENTRIES:
        raise InvalidArgument(field, f"has more than {MAX_MAP_ENTRIES} entries")
    out: dict[str, AttrValue] = {}
    for key, value in values.items():
        name = f"{field}.{key}"
        if schema is None:
            out[key] = check_value(name, value, removable=removable)
            continue
        spec = schema.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, sorted(schema), n=1)
            raise InvalidArgument(name, f"is not declared in the ruleset's {block} block"
                                  + (f"; did you mean '{close[0]}'?" if close else ""))
        out[key] = check_value(name, value, None if value is None else spec.type, removable)
    return out


def check_traits(traits: Mapping[str, Any], ruleset: Ruleset) -> dict[str, AttrValue]:
    """A TrackEvent's traits checked against the profile schema (a None removes one), and
    a ``timezone`` that the tz database knows (a name it lacks would read as UTC: every
    ``hour_of_day`` and send time silently off by the customer's offset)."""
    checked = check_map("traits", traits, ruleset.profile_schema, "profile", removable=True)
    zone = checked.get("timezone")
    if isinstance(zone, str) and zone and not is_zone(zone):
        raise InvalidArgument("traits.timezone", f"{zone!r} is not a time zone of the tz "
                                                 "database (e.g. Europe/Paris, UTC)")
    return checked


def check_time(field: str, at: float | None, now: float) -> float:
    if at is None:
        return now
    if not math.isfinite(at) or at <= 0:
        raise InvalidArgument(field, "must be a positive epoch time")
    if at > now + MAX_FUTURE_SECONDS:
        raise InvalidArgument(field, "is in the future")
    return at


def decide_input(
    ruleset: Ruleset,
    *,
    user_id: str,
    placement: str,
    channel: str = "",
    context: Mapping[str, Any] | None = None,
    limit: int = 0,
    explain: bool = False,
    at: float | None = None,
    now: float,
) -> DecideInput:
    """Check a Decide request against the serving ruleset."""
    check_id("user_id", user_id)
    if not placement:
        raise InvalidArgument("placement", "is required")
    target = ruleset.placements.get(placement)
    if target is None:
        known = ", ".join(sorted(ruleset.placements))
        raise InvalidArgument("placement", f"unknown placement {placement!r} (known: {known})")
    if not channel:
        if len(target.channels) != 1:
            raise InvalidArgument("channel", f"is required for placement {placement!r}")
        (channel,) = target.channels
    elif channel not in target.channels:
        known = ", ".join(sorted(target.channels))
        raise InvalidArgument("channel", f"unknown channel {channel!r} for {placement!r} "
                                         f"(known: {known})")
    if limit < 0 or limit > MAX_LIMIT:
        raise InvalidArgument("limit", f"must be between 0 and {MAX_LIMIT}")
    checked = check_map("context", context or {}, ruleset.context_schema, "context")
    if at is not None and (not math.isfinite(at) or at <= 0):
        raise InvalidArgument("at", "must be a positive epoch time")
    if at is not None and at > now + MAX_DECIDE_AHEAD_SECONDS:  # its record would be kept
        raise InvalidArgument("at", "is more than 366 days ahead (a decision is for now, "
                                    "or for a send scheduled within a year)")  # that long
    return DecideInput(
        user_id=user_id,
        placement=target,
        channel=channel,
        context=checked,
        limit=limit or target.slots,
        explain=explain,
        now=at if at is not None else now,
        ruleset=ruleset,
    )


def track_input(
    ruleset: Ruleset,
    *,
    user_id: str,
    event_type: str,
    properties: Mapping[str, Any] | None = None,
    traits: Mapping[str, Any] | None = None,
    at: float | None = None,
    now: float,
    item_id: str = "",
    event_id: str = "",
) -> TrackInput:
    """Check a TrackEvent request; a numeric ``value`` property is the event's value, the
    ``item_id`` (or a string ``item_id`` property) the item it is about."""
    check_id("user_id", user_id)
    if not event_type:
        raise InvalidArgument("event_type", "is required")
    if not NAME_RE.fullmatch(event_type):
        raise InvalidArgument("event_type", "must be 1-64 letters, digits or _.:-")
    if ruleset.events and event_type not in ruleset.events:
        close = difflib.get_close_matches(event_type, sorted(ruleset.events), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InvalidArgument("event_type", f"'{event_type}' is not declared in the ruleset's "
                                            f"events{hint} (declared: "
                                            f"{', '.join(sorted(ruleset.events))})")
    props = check_map("properties", properties or {}, None)
    value = props.get("value", 0.0)
    if not isinstance(value, float) or isinstance(value, bool):
        raise InvalidArgument("properties.value", "must be a number")
    checked_traits = check_traits(traits or {}, ruleset)
    if not item_id:
        prop = props.get("item_id")
        if prop is not None and not isinstance(prop, str):
            raise InvalidArgument("properties.item_id", "must be a string")
        item_id = prop or ""
        field = "properties.item_id"
    else:
        field = "item_id"
    if item_id:
        check_id(field, item_id)
    if event_id:
        check_id("event_id", event_id)
    return TrackInput(user_id, event_type, value, check_time("timestamp", at, now),
                      checked_traits, item_id, event_id)


def check_outcome(outcome: str) -> str:
    if outcome not in OUTCOMES:
        raise InvalidArgument("outcome", f"must be one of {', '.join(OUTCOMES)}")
    return outcome


class NotFound(LookupError):
    """A named thing (an experiment, say) that the serving ruleset does not have."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class FailedPrecondition(RuntimeError):
    """The request is valid but this server is not in a state to serve it."""


class ResourceExhausted(RuntimeError):
    """A limit of this server was reached before the request was served (nothing was
    done for it): send it again, in another call."""


class Aborted(RuntimeError):
    """The request conflicts with another still in progress (a Decide whose
    ``request_id`` is being decided by an earlier call): retry after a moment."""
