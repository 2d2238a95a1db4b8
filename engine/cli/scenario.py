"""A customer described in a file: traits, past events and outcome history.

Used by ``arbiter explain --profile FILE``, ``arbiter decide --profile FILE`` and
``arbiter test``. JSON or TOML, one shape::

    traits = { first_name = "Ann", email_opt_in = true }
    events = [ { type = "add_to_cart", value = 80, ago = "26h", item = "sku-12" } ]
    contacts = [ { action = "cart_reminder", outcome = "impression", ago = "2h",
                   channel = "email" } ]   # channel: default, see below

A contact without a ``channel`` was on the channel decided for when the
action can be shown there, else on the first channel (by name) of its first placement: a test of an
SMS decision whose customer "had two impressions" had them on SMS, where the SMS
channel cap counts them.

``ago`` is a duration before the decision time. A profile with no events and no
traits is a customer never seen before.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dsl.ruleset import Ruleset
from dsl.units import duration_seconds
from dsl.vocabulary import OUTCOMES
from engine.cli.typed_values import declared_map
from engine.profiles import record_contact, record_traits
from engine.records import Profile
from engine.requests import InvalidArgument, check_traits
from engine.service import Arbiter

T = TypeVar("T")


class EventLine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One of a profile file's past events."""

    type: str
    value: float = 0.0
    ago: str = "0s"
    item: str = ""


class ContactLine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One of a profile file's past outcomes."""

    action: str
    outcome: str = "impression"
    ago: str = "0s"
    channel: str | None = None


class PopulationLine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One line of a population file: another customer's event."""

    user: str
    type: str
    value: float = 0.0
    ago: str = "0s"
    item: str = ""


class Scenario(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A profile file, checked for its shape: its keys and their types."""

    traits: dict[str, Any] = {}
    events: tuple[EventLine, ...] = ()
    contacts: tuple[ContactLine, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, field: str = "profile") -> Scenario:
        """The profile described by ``data`` (a file's parsed JSON or TOML); a wrong key
        or type is :class:`InvalidArgument` naming where it is.

        >>> Scenario.from_dict({"events": [{"type": "visit", "ago": 3}]})
        Traceback (most recent call last):
        engine.requests.InvalidArgument: profile.events[0].ago: expected `str`, got `int`
        >>> Scenario.from_dict({"traits": {}, "event": []})
        Traceback (most recent call last):
        engine.requests.InvalidArgument: profile: unknown key `event`; expected traits, ...contacts
        """
        return shaped(data, cls, field, "traits, events, contacts")


def shaped(data: Any, kind: type[T], field: str, keys: str) -> T:
    """``data`` converted to ``kind``; a wrong key or type is :class:`InvalidArgument`
    naming its place under ``field`` (``keys``: the keys ``kind`` takes, for the message)."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as err:
        message, _, where = str(err).partition(" - at `$")
        place = (field + where.rstrip("`")).lstrip(".")
        if message.startswith("Object contains unknown field"):
            raise InvalidArgument(place, f"unknown key {message.rsplit(' ', 1)[1]}"
                                         + ("; expected " + keys if place == field else "")
                                  ) from None
        raise InvalidArgument(place, message[:1].lower() + message[1:]) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read a profile file (``.json`` or ``.toml``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: {err}") from None
    return Scenario.from_dict(data)


def _ago(entry: EventLine | ContactLine | PopulationLine, field: str) -> float:
    try:
        return duration_seconds(entry.ago)
    except ValueError:
        raise InvalidArgument(f"{field}.ago", f"not a duration: {entry.ago!r} (e.g. 26h, 3d)"
                              ) from None


def apply_scenario(arbiter: Arbiter, user_id: str, scenario: Scenario, now: float,
                   placement: str = "", channel: str = "") -> None:
    """Build the user's profile in the arbiter's store as the scenario describes, for a
    decision at ``placement`` on ``channel`` (empty: the placement's only one), the
    channel of a contact the file gives none."""
    served = arbiter.ruleset.placements.get(placement)
    if not channel and served is not None and len(served.channels) == 1:
        (channel,) = served.channels
    events = scenario.events
    schema = arbiter.ruleset.profile_schema
    traits = declared_map("traits", scenario.traits, schema)
    if traits and not events:
        checked = check_traits(traits, arbiter.ruleset)
        arbiter.store.update_profile(user_id, lambda p: record_traits(p, user_id, checked, now))
    for i, event in enumerate(events):
        field = f"events[{i}]"
        arbiter.track(user_id=user_id, event_type=event.type,
                      properties={"value": event.value} if event.value else {},
                      traits=traits if i == len(events) - 1 else {},
                      at=now - _ago(event, field), item_id=event.item)
    if any(event.item for event in events):
        arbiter.learn()  # the recommender learns the items before the decision
    for i, contact in enumerate(scenario.contacts):
        field = f"contacts[{i}]"
        if contact.action not in arbiter.ruleset.actions:
            raise InvalidArgument(f"{field}.action", f"unknown action {contact.action!r}")
        if contact.outcome not in OUTCOMES:
            raise InvalidArgument(f"{field}.outcome", f"must be one of {', '.join(OUTCOMES)}")
        arbiter.store.update_profile(user_id, _contact(
            user_id, contact.action, contact.outcome, now - _ago(contact, field),
            contact.channel or _default_channel(arbiter.ruleset, contact.action, channel)))


def apply_population(arbiter: Arbiter, path: Path, now: float) -> None:
    """Other customers' events, from a JSON-lines file of ``{"user", "type", "value",
    "ago", "item"}`` objects, tracked oldest first, then learnt (the clusters, the
    recommender): the population a test case's customer is compared with."""
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"population line {n}", f"not JSON: {err.msg}") from None
        entry = shaped(data, PopulationLine, f"population line {n}",
                       "user, type, value, ago, item")
        events.append((now - _ago(entry, f"population line {n}"), entry))
    events.sort(key=lambda pair: pair[0])
    for at, entry in events:
        arbiter.track(user_id=entry.user, event_type=entry.type, at=at,
                      properties={"value": entry.value} if entry.value else {},
                      item_id=entry.item)
    arbiter.sync()  # learnt (clusters, scores, recommender) and the population's percentiles


def _default_channel(ruleset: Ruleset, action_id: str, decided: str) -> str:
    """A contact's channel when the file does not say: the one decided for if the action
    can be shown there, else its first placement's first channel (by name)."""
    action = ruleset.actions[action_id]
    channels = {channel for name in action.placements
                for channel in ruleset.placements[name].channels}
    if action.channels is not None:
        channels &= set(action.channels)
    if decided in channels:
        return decided
    return min(ruleset.placements[min(action.placements)].channels)


def _contact(user_id: str, action: str, outcome: str, at: float, channel: str
             ) -> Callable[[Profile | None], Profile]:
    return lambda profile: record_contact(profile, user_id, action, outcome, at, channel)
