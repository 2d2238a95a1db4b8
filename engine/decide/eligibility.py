"""Whether an action may be shown now: channel, validity, consent, conditions, value,
and the contact policies (caps, cooldown, suppression, group and channel caps).

Every check that applies is traced as a reason; without a tracer, the first
failing check ends the action's evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from dsl.ast import Pos
from dsl.ruleset import Action, Ruleset
from dsl.vocabulary import ReasonKind
from engine.decide.contacts import impressions_within, last_contact, outcomes_within
from engine.decide.decision import Reason, RecommendedItem
from engine.decide.facts import Facts
from engine.decide.inputs import DecideInput
from engine.decide.recommend import recommend
from engine.decide.tracer import Tracer
from engine.records import Profile, pseudonym

log = logging.getLogger(__name__)

ELIGIBILITY, CONSENT, CAP = ReasonKind.ELIGIBILITY, ReasonKind.CONSENT, ReasonKind.CAP
Check = tuple[str, bool, str, Pos]
"""(name, passed, detail, where in the rules) of one contact-policy check."""


def check_eligibility(ruleset: Ruleset, action: Action, req: DecideInput, facts: Facts,
                      profile: Profile | None, tracer: Tracer) -> float | None:
    """The action's value if it may be shown, else None (the caller traces the verdict)."""
    if action.channels is not None and req.channel not in action.channels:
        if tracer.enabled:
            tracer.check(action.id, Reason(ELIGIBILITY, "channel", False,
                                           f"{req.channel} not in "
                                           f"{', '.join(sorted(action.channels))}"))
        return None
    if (action.starts is not None and req.now < action.starts) or (
            action.ends is not None and req.now >= action.ends):
        if tracer.enabled:
            tracer.check(action.id, Reason(ELIGIBILITY, "validity", False,
                                           "outside its starts/ends window", str(action.pos)))
        return None
    if action.consent and not _consented(action, facts, tracer):
        return None
    args = facts.args()
    if action.when is not None:
        try:  # (inline: this runs for every action of every decision)
            held: bool | None = action.when(*args)
        except Exception:  # a bug or bad data: logged, and unknown
            log.exception("'when' of %s failed", action.id)
            held = None
        if tracer.enabled:
            _trace_when(action, held, facts, tracer)
        if held is not True:
            return None
    if action.unless is not None:
        blocked = _condition(action.unless, args, action, "unless")
        if tracer.enabled:
            _trace_unless(action, blocked, tracer)
        if blocked is not False:  # unknown blocks too: never show on missing data
            return None
    value = _value(action, args, tracer)
    if value is None or not contact_policies_allow(ruleset, action, req, profile, tracer,
                                                   facts.shared_counts):
        return None
    if action.recommend is not None and not recommended_items(action, facts, tracer):
        return None
    return value


def recommended_items(action: Action, facts: Facts, tracer: Tracer) -> list[RecommendedItem]:
    """The action's ``items: recommend(...)`` for this customer (kept on the facts for
    its content and the response); an action with no item to show is not eligible."""
    spec = action.recommend
    found = facts.recommended.get(action.id)
    if found is None and spec is not None:
        sources = facts.recommendations
        if sources is not None and not facts.user_key:
            facts.user_key = pseudonym(str(facts.attributes["user_id"]))
        found = [] if sources is None else recommend(spec, sources, facts.profile, facts.user_key,
                                                     facts.args(), facts.now)
        facts.recommended[action.id] = found
        if tracer.enabled:
            if not found:
                tracer.check(action.id, Reason(
                    ReasonKind.RECOMMENDATION, "items", False,
                    "no item to recommend" + (f" where {spec.where_source}"
                                              if spec.where_source else ""), str(spec.pos)))
            for item in found:
                tracer.check(action.id, Reason(ReasonKind.RECOMMENDATION, item.item_id, True,
                                               f"{item.reason}, score {item.score:.4f}",
                                               str(spec.pos)))
    return found or []


def _consented(action: Action, facts: Facts, tracer: Tracer) -> bool:
    given = facts.attributes.get("consents") or ()
    missing = [purpose for purpose in action.consent if purpose not in given]
    if tracer.enabled:
        tracer.check(action.id, Reason(CONSENT, ", ".join(action.consent), not missing,
                                       f"missing consent: {', '.join(missing)}" if missing
                                       else "given", str(action.pos)))
    return not missing


def _condition(fn: Callable[..., Any], args: tuple[Any, ...], action: Action,
               what: str) -> bool | None:
    """A condition's value; a failure (a bug or bad data) is logged and counts as unknown."""
    try:
        result: bool | None = fn(*args)
    except Exception:
        log.exception("'%s' of %s failed", what, action.id)
        return None
    return result


def _shown(value: bool | None) -> str:
    return str(value) if value is not None else "unknown"


def _trace_when(action: Action, held: bool | None, facts: Facts, tracer: Tracer) -> None:
    detail = action.when_source
    segs = ", ".join(f"{s}={facts.segments.get(s)}" for s in action.when_segments)
    if segs:
        detail += f"  [{segs}]"
    tracer.check(action.id, Reason(ELIGIBILITY, "when", held is True,
                                   f"{detail} -> {_shown(held)}", str(action.when_pos)))


def _trace_unless(action: Action, blocked: bool | None, tracer: Tracer) -> None:
    tracer.check(action.id, Reason(ELIGIBILITY, "unless", blocked is False,
                                   f"{action.unless_source} -> {_shown(blocked)}",
                                   str(action.unless_pos)))


def _value(action: Action, args: tuple[Any, ...], tracer: Tracer) -> float | None:
    try:
        value = action.value(*args)
    except Exception:
        log.exception("value of %s failed", action.id)
        value = None
    if value is None:
        if tracer.enabled:
            tracer.check(action.id, Reason(ELIGIBILITY, "value", False,
                                           "value is unknown (null)", str(action.pos)))
        return None
    return float(value)


def contact_policies_allow(ruleset: Ruleset, action: Action, req: DecideInput,
                           profile: Profile | None, tracer: Tracer,
                           counted: dict[str, int] | None = None) -> bool:
    """The action's cap, cooldown and suppression, its group's cap, the channel's cap.

    All are counted from the profile's contact history (outcomes reported with
    Feedback); every check that applies is traced. A group's or the channel's count is
    the same for every action of the decision: ``counted`` keeps it (per decision).
    """
    if not tracer.enabled:
        return _allowed(ruleset, action, req, profile, {} if counted is None else counted)
    checks: list[Check] = []
    if action.cap is not None or action.cooldown is not None or action.suppress is not None:
        _action_limits(checks, action, req, profile)
    if action.group is not None or req.channel in ruleset.channel_caps:
        _shared_limits(checks, ruleset, action, req, profile,
                       {} if counted is None else counted)
    allowed = True
    for name, ok, detail, location in checks:
        tracer.check(action.id, Reason(CAP, name, ok, detail, str(location)))
        allowed = allowed and ok
    return allowed


def _allowed(ruleset: Ruleset, action: Action, req: DecideInput, profile: Profile | None,
             counted: dict[str, int]) -> bool:
    """:func:`contact_policies_allow` untraced: the checks in the same order, the first
    that fails ends it, nothing described."""
    now = req.now
    if action.cap is not None and impressions_within(
            profile, action.id, now, action.cap.window_seconds) >= action.cap.limit:
        return False
    if action.cooldown is not None:
        last = last_contact(profile, action.id)
        if last is not None and now - last < action.cooldown.window_seconds:
            return False
    rule = action.suppress
    if rule is not None and outcomes_within(profile, (action.id,), now, rule.window_seconds,
                                            rule.outcome) >= rule.count:
        return False
    group_cap = ruleset.group_caps.get(action.group) if action.group else None
    if group_cap is not None and action.group is not None and _group_count(
            counted, ruleset, action.group, profile, now) >= group_cap.limit:
        return False
    channel_cap = ruleset.channel_caps.get(req.channel)
    return channel_cap is None or _channel_count(
        counted, ruleset, req.channel, profile, now) < channel_cap.limit


def _group_count(counted: dict[str, int], ruleset: Ruleset, group: str,
                 profile: Profile | None, now: float) -> int:
    """Impressions of the group's actions in its cap's window (once per decision)."""
    return _once(counted, "group\x1f" + group, profile, ruleset.groups[group], now,
                 ruleset.group_caps[group].window_seconds)


def _channel_count(counted: dict[str, int], ruleset: Ruleset, channel: str,
                   profile: Profile | None, now: float) -> int:
    """Impressions on the channel in its cap's window (once per decision)."""
    return _once(counted, "channel\x1f" + channel, profile, None, now,
                 ruleset.channel_caps[channel].window_seconds, channel)


def _once(counted: dict[str, int], key: str, profile: Profile | None,
          action_ids: Iterable[str] | None, now: float, window: float,
          channel: str | None = None) -> int:
    """Impressions of these actions (None: all) in the window, kept in ``counted``."""
    if profile is None or not profile.contacts:
        return 0
    found = counted.get(key)
    if found is None:
        found = counted[key] = outcomes_within(
            profile, profile.contacts if action_ids is None else action_ids, now, window,
            channel=channel)
    return found


def _action_limits(checks: list[Check], action: Action, req: DecideInput,
                   profile: Profile | None) -> None:
    """Frequency cap, cooldown and suppression of the action itself."""
    now = req.now
    if action.cap is not None:
        shown = impressions_within(profile, action.id, now, action.cap.window_seconds)
        checks.append(("frequency", shown < action.cap.limit,
                       f"{shown} impressions, {action.cap.text}",
                       action.cap.pos))
    if action.cooldown is not None:
        last = last_contact(profile, action.id)
        ok = last is None or now - last >= action.cooldown.window_seconds
        since = "never shown" if last is None else f"last shown {(now - last) / 3600:.1f}h ago"
        checks.append(("cooldown", ok, f"{since}, cooldown {action.cooldown.text}",
                       action.cooldown.pos))
    if action.suppress is not None:
        rule = action.suppress
        seen = outcomes_within(profile, (action.id,), now, rule.window_seconds, rule.outcome)
        checks.append(("suppress", seen < rule.count,
                       f"{seen} {rule.outcome}(s), {rule.text}", rule.pos))


def _shared_limits(checks: list[Check], ruleset: Ruleset, action: Action, req: DecideInput,
                   profile: Profile | None, counted: dict[str, int]) -> None:
    """The caps the action shares: its group's and the channel's."""
    now = req.now
    group_cap = ruleset.group_caps.get(action.group) if action.group else None
    if group_cap is not None and action.group is not None:
        shown = _group_count(counted, ruleset, action.group, profile, now)
        checks.append((f"group {action.group}", shown < group_cap.limit,
                       f"{shown} impressions in the group, {group_cap.text}", group_cap.pos))
    channel_cap = ruleset.channel_caps.get(req.channel)
    if channel_cap is not None:
        shown = _channel_count(counted, ruleset, req.channel, profile, now)
        checks.append((f"channel {req.channel}", shown < channel_cap.limit,
                       f"{shown} impressions on {req.channel}, {channel_cap.text}",
                       channel_cap.pos))
