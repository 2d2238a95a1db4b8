"""What a decision log entry holds (adapters/decision_log.py writes them)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

import msgspec

from dsl.ruleset import Ruleset
from engine.decide.contacts import contact_entries
from engine.decide.decision import Decision
from engine.profiles import recent_events
from engine.records import ContactLog, LearningEvent, Profile

PII_MASK = "<pii>"


class DecisionLog(Protocol):
    dropped: int
    """Entries not written because the writer was behind (bounded memory)."""

    def write(self, entry: dict[str, Any]) -> None: ...

    def keeps(self, decision_id: str) -> bool:
        """Whether the decision (and its outcomes) is logged: all, or a sample chosen by
        the id alone (:func:`engine.records.sampled`), the same in every process."""
        ...

    def forget(self, user_id: str) -> int:
        """Remove every entry about the user (ForgetProfile); returns how many. Raises
        :class:`~engine.ports.DecisionLogUnavailable` when they could not be removed,
        TimeoutError when it took too long."""
        ...

    forget_cursor: str
    """Where in the store's forgotten users (:meth:`~engine.ports.Store.forgotten_since`)
    this log's erasures reached, as kept with the log ("" when it never followed them)."""

    def forget_pseudonyms(self, pseudonyms: Collection[str], cursor: str) -> None:
        """Queue the erasure of every entry about the users with these pseudonyms (forgotten
        by another process), then keep ``cursor`` as :attr:`forget_cursor`."""
        ...

    def close(self) -> None: ...


def decision_entry(ruleset: Ruleset, decision: Decision, context: Mapping[str, Any],
                   profile: Profile | None) -> dict[str, Any]:
    """The decision, its input (PII masked) and the probability of what it showed."""
    stored: dict[str, Any] | None = None
    if profile is not None:
        stored = msgspec.to_builtins(profile)
        stored.pop("event_ids", None)  # (what retries deduplicate on: nothing to replay)
        for event_type, stats in profile.events.items():  # (as pairs, not base64, readably)
            if isinstance(stats.recent, bytes):
                stored["events"][event_type]["recent"] = recent_events(stats)
        for action_id, history in profile.contacts.items():  # (as triples, as before)
            if isinstance(history, ContactLog):
                stored["contacts"][action_id] = contact_entries(history)
        attributes = stored.get("attributes", {})
        for name in attributes:
            spec = ruleset.profile_schema.get(name)
            if spec is not None and spec.pii:
                attributes[name] = PII_MASK
    return {
        "kind": "decision",
        "decision_id": decision.decision_id,
        "at": decision.decided_at,
        "user_id": decision.user_id,
        "placement": decision.placement,
        "channel": decision.channel,
        "revision": decision.revision,
        "context": {k: PII_MASK if k in ruleset.private_context else v
                    for k, v in context.items() if k not in ("placement", "channel")},
        "profile": stored,
        "holdout": decision.holdout,
        "actions": [{"action_id": a.action_id, "rank": a.rank, "score": a.score,
                     "propensity": a.propensity, "probability": a.probability,
                     "experiment": a.experiment, "arm": a.arm,
                     **({"items": [{"item_id": i.item_id, "score": i.score, "reason": i.reason}
                                   for i in a.items]} if a.items else {})}
                    for a in decision.actions],
        "policy": decision.policy,
    }


def outcome_entry(event: LearningEvent, user_id: str) -> dict[str, Any]:
    """An acknowledged outcome, with its decision's user (so that ForgetProfile finds it in
    any process's log, not only in the one that logged the decision)."""
    entry = {"kind": "outcome", "decision_id": event.decision_id, "user_id": user_id,
             "action_id": event.action_id, "outcome": event.outcome, "value": event.value,
             "at": event.at}
    if event.item_id:
        entry["item_id"] = event.item_id
    return entry
