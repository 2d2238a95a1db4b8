"""A customer described in a file: traits, past events and outcome history.

Used by ``arbiter explain --profile FILE``, ``arbiter decide --profile FILE`` and
``arbiter test``. JSON or TOML, one shape::

    traits = { first_name = "Ann", email_opt_in = true }
    events = [ { type = "add_to_cart", value = 80, ago = "26h", item = "sku-12" } ]
    contacts = [ { action = "cart_reminder", outcome = "impression", ago = "2h",
                   channel = "email" } ]   # channel: default, the action's first

``ago`` is a duration before the decision time. A profile with no events and no
traits is a customer never seen before.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsl.ruleset import Ruleset
from dsl.units import duration_seconds
from dsl.vocabulary import OUTCOMES
from engine.profiles import record_contact, record_traits
from engine.records import Profile
from engine.requests import InvalidArgument, check_map
from engine.service import Arbiter


@dataclass(frozen=True)
class Scenario:
    traits: Mapping[str, Any]
    events: tuple[Mapping[str, Any], ...]
    contacts: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        unknown = set(data) - {"traits", "events", "contacts"}
        if unknown:
            raise InvalidArgument("profile", f"unknown key(s) {', '.join(sorted(unknown))}; "
                                             "expected traits, events, contacts")
        return cls(dict(data.get("traits", {})), tuple(data.get("events", ())),
                   tuple(data.get("contacts", ())))


def load_scenario(path: str | Path) -> Scenario:
    """Read a profile file (``.json`` or ``.toml``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return Scenario.from_dict(data)


def _ago(entry: Mapping[str, Any], field: str) -> float:
    raw = entry.get("ago", "0s")
    try:
        return duration_seconds(str(raw))
    except ValueError:
        raise InvalidArgument(f"{field}.ago", f"not a duration: {raw!r} (e.g. 26h, 3d)") from None


def apply_scenario(arbiter: Arbiter, user_id: str, scenario: Scenario, now: float) -> None:
    """Build the user's profile in the arbiter's store as the scenario describes."""
    events = scenario.events
    if scenario.traits and not events:
        traits = check_map("traits", scenario.traits, arbiter.ruleset.profile_schema, "profile")
        arbiter.store.update_profile(user_id, lambda p: record_traits(p, user_id, traits, now))
    for i, event in enumerate(events):
        field = f"events[{i}]"
        if "type" not in event:
            raise InvalidArgument(f"{field}.type", "is required")
        value = event.get("value", 0)
        arbiter.track(user_id=user_id, event_type=str(event["type"]),
                      properties={"value": float(value)} if value else {},
                      traits=scenario.traits if i == len(events) - 1 else {},
                      at=now - _ago(event, field), item_id=str(event.get("item", "")))
    if any("item" in event for event in events):
        arbiter.learn()  # the recommender learns the items before the decision
    for i, contact in enumerate(scenario.contacts):
        field = f"contacts[{i}]"
        action, outcome = contact.get("action"), contact.get("outcome", "impression")
        if action not in arbiter.ruleset.actions:
            raise InvalidArgument(f"{field}.action", f"unknown action {action!r}")
        if outcome not in OUTCOMES:
            raise InvalidArgument(f"{field}.outcome", f"must be one of {', '.join(OUTCOMES)}")
        action_id = str(action)
        channel = str(contact.get("channel", _first_channel(arbiter.ruleset, action_id)))
        arbiter.store.update_profile(user_id, _contact(
            user_id, action_id, str(outcome), now - _ago(contact, field), channel))


def apply_population(arbiter: Arbiter, path: Path, now: float) -> None:
    """Other customers' events, from a JSON-lines file of ``{"user", "type", "value",
    "ago", "item"}`` objects, tracked oldest first, then learnt (the clusters, the
    recommender): the population a test case's customer is compared with."""
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"population line {n}", f"not JSON: {err.msg}") from None
        if not isinstance(entry, dict) or "user" not in entry or "type" not in entry:
            raise InvalidArgument(f"population line {n}", "needs a user and a type")
        events.append((now - _ago(entry, f"population line {n}"), entry))
    events.sort(key=lambda pair: pair[0])
    for at, entry in events:
        value = entry.get("value", 0)
        arbiter.track(user_id=str(entry["user"]), event_type=str(entry["type"]), at=at,
                      properties={"value": float(value)} if value else {},
                      item_id=str(entry.get("item", "")))
    arbiter.sync()  # learnt (clusters, scores, recommender) and the population's percentiles


def _first_channel(ruleset: Ruleset, action_id: str) -> str:
    """A contact's channel when the file does not say: the action's first, by name."""
    placement = ruleset.placements[min(ruleset.actions[action_id].placements)]
    return min(placement.channels)


def _contact(user_id: str, action: str, outcome: str, at: float, channel: str
             ) -> Callable[[Profile | None], Profile]:
    return lambda profile: record_contact(profile, user_id, action, outcome, at, channel)
