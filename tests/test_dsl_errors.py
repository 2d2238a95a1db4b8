"""Broken rule files and the exact diagnostics they must produce."""

from __future__ import annotations

from typing import Any

import pytest

from dsl.diagnostics import RulesetError
from dsl.loader import build, load_text

HEADER = """
profile { spend: number = 0  name: string pii  joined: timestamp }
context { device: string }
events: purchase, visit
placement home { channels: web, app }
"""

# (rule text after HEADER, expected "line:col: error: message" of the first error)
CASES = [
    ("segment s = count(purchase, within=0d) > 0",
     "6:36: error: 'within' of 0d counts nothing: a window is at least 1s"),
    ('action a { placements: home value: 1 content { t: "Hi {{ }}" } }',
     "6:55: error: an empty {{ }}: write what to insert, e.g. {{ profile.first_name }}"),
    ("action a { placements: home value: 1 cooldown: 0s }",  # (never held a thing)
     "6:48: error: a cooldown of no time never holds: give it a duration (e.g. 1d)"),
    ("action a { placements: home value: 1 cap: 1 per 0d }",
     "6:38: error: a cap of no time never holds: give it a duration (e.g. 1d)"),
    ('action a { placements: home value: 1 content { t: "{{ profile.name | round(2) }}" } }',
     "6:55: error: round needs a number, not string"),
    ('action a { placements: home value: 1 content { t: "{{ profile.spend | upper | round(1) '
     '}}" } }', "6:55: error: round needs a number, not string"),
    ('action a { placements: home value: 1 when: profile.spend = 5 }',
     "6:58: error: syntax error: unexpected '=': compare with '=='"),
    ("segment s = profile.spnd > 5",
     "6:13: error: unknown profile attribute 'spnd'; did you mean 'spend'?"),
    ("segment s = context.devise == \"ios\"",
     "6:13: error: unknown context attribute 'devise'; did you mean 'device'?"),
    ("segment s = count(purchse) > 1",
     "6:19: error: unknown event 'purchse'; did you mean 'purchase'?"),
    ("segment s = now - last(purchase) > 24",
     "6:34: error: cannot compare duration with number (write the number with a unit"),
    ("segment s = profile.name > 3",
     "6:26: error: cannot compare string with number"),
    ("segment s = profile.spend",
     "6:13: error: segment condition must be true or false, not number"),
    ("segment s = profile.joined == null",
     "6:28: error: compare with null using 'is null' or 'is not null'"),
    ("segment a = b\nsegment b = a",
     "6:9: error: segments refer to each other in a cycle: a -> b -> a"),
    ("segment s = t",
     "6:13: error: unknown segment 't'"),
    ("action a { placements: hoem value: 1 }",
     "6:12: error: unknown placement 'hoem'; did you mean 'home'?"),
    ("action a { placements: home }",
     "6:8: error: action 'a' needs 'value: ...'"),
    ("action a { placements: home value: \"x\" }",
     "6:36: error: 'value' must be a number, not string"),
    ("action a { placements: home channels: email value: 1 }",
     "6:29: error: channel 'email' is not a channel of placements home"),
    ("action a { placements: home value: 1 value: 2 }",
     "6:38: error: 'value' is set twice in this action"),
    ("action a { placements: home value: 1 content { h: \"Hi {{ profile.nam }}\" } }",
     "6:58: error: unknown profile attribute 'nam'; did you mean 'name'?"),
    ("action a { placements: home value: 1 content { h: \"Hi {{ profile.name | shout }}\" } }",
     "6:58: error: unknown filter 'shout'"),
    ("action a { placements: home value: 1 content { h: \"Hi {{ profile. }}\" } }",
     "6:66: error: syntax error: unexpected end of input; expected name"),
    ("action a { placements: home value: 1 prior: 1.5 }",
     "6:38: error: 'prior' is a propensity: between 0 and 1 exclusive"),
    ("action a { placements: home value: 1 }\naction a { placements: home value: 2 }",
     "7:8: error: action 'a' is already defined as an action at"),
    ("action a { placements: home value: 1 }\nexperiment e on home { arms: a, b }",
     "7:24: error: unknown action 'b'"),
    ("action a { placements: home value: 1 }\nexperiment e on home { arms: a }",
     "7:24: error: an experiment needs at least 2 arms"),
    ("segment s = profile.spend >",
     "6:28: error: syntax error: unexpected end of input; expected one of"),
    ("segment s = profile.spend > 5 5",
     "6:31: error: syntax error: unexpected '5'"),
    ("action a { placements: home value: 1 foo: 2 }",
     "6:38: error: unknown action field 'foo' (action fields: placements, channels, tags,"),
    ("action a { placements: home valeu: 1 }",
     "6:29: error: unknown action field 'valeu'; did you mean 'value'?"),
    ("experiment e on home { arms: a rewrd: click }",
     "6:32: error: unknown experiment field 'rewrd'; did you mean 'reward'?"),
    ("model on home { learnr: tree }",
     "6:17: error: unknown model field 'learnr'; did you mean 'learner'?"),
    ("placement p { channels: web slot: 2 }",
     "6:29: error: unknown placement field 'slot'; did you mean 'slots'?"),
    ("segment s = count(visit, within=180d) >= 2",
     "6:33: error: 'within' of 180d is longer than the 90d of events kept per customer"),
    ("action a { placements: home cap: 3 when: true }",
     "6:36: error: syntax error: unexpected 'when'; expected 'per'"),
    ("segment s = days_sinc(profile.joined) < 3",
     "6:13: error: unknown function 'days_sinc'; did you mean 'days_since'?"),
    ("segment s = $",
     "6:13: error: syntax error: unexpected character '$'"),
    ("placement p2 { channels: web  fallback: nope }",
     "6:31: error: unknown action 'nope'"),
    ("action a { placements: home value: 1 consent: email_marketing }",
     "6:38: error: 'consent' needs a 'consents: list' attribute in the profile block"),
    ("action a { placements: home value: 1 starts: 2026-12-01 ends: 2026-11-01 }",
     "6:57: error: 'ends' must be after 'starts'"),
    ("action a { placements: home value: 1 starts: 2026-13-01 }",
     "6:38: error: 'starts' is not a valid date: 2026-13-01"),
    ("action a { placements: home value: 1 unless: profile.spend }",
     "6:46: error: 'unless' must be true or false, not number"),
    ("profile { tags: list = 1 }",
     "6:24: error: a list attribute has no default"),
    ("segment s = profile.name in profile.spend",
     "6:29: error: 'in' needs a list on the right, not number"),
    ("action a { placements: home value: 1 content { h: "
     "\"{% for x in profile.spend %}{% end %}\" } }",
     "6:64: error: {% for %} needs a list, not number"),
    ("action a { placements: home value: 1 content { h: \"{% if profile.spend %}x{% end %}\" } }",
     "6:58: error: {% if %} needs true or false, not number"),
    ("action a { placements: home value: 1 content { h: \"{% if 1 > 0 %}x\" } }",
     "6:54: error: {% if %} is never closed with {% end %}"),
    ("action a { placements: home value: 1 content { h: \"x{% end %}\" } }",
     "6:55: error: {% end %} without an open block"),
    ("action a { placements: home value: 1 content { h: \"{% while 1 %}\" } }",
     "6:54: error: unknown template block"),
    ("action a { placements: home value: 1 content { h: \"{{ x }}\" } }",
     "6:55: error: unknown segment 'x'"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  allocate: weights(50, 30, 20) }",
     "8:36: error: 3 weight(s) for 2 arms"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  holdout: 100% }",
     "8:36: error: holdout is a percentage from 0% to less than 100%"),
    ("segment s = profile.name[\"x\"] == \"y\"",
     "6:13: error: only a map can be indexed, not string"),
    ("placement p2 { channels: web  rank: action.id }",
     "6:37: error: 'rank' must be a number, not string"),
    ("segment s = action.value > 1",
     "6:13: error: 'action.' fields can only be used in a placement's 'rank'"),
    ("policy { group recovery: at most 2 per 7d }",
     "6:10: error: no action is in group 'recovery'"),
    ("policy { channel emial: at most 2 per 7d }",
     "6:10: error: unknown channel 'emial'"),
    ("action a { placements: home value: 1 suppress: 7d after 2 dismis }",
     "6:38: error: unknown outcome 'dismis': use impression, click, conversion or dismiss"),
    # windows and counts the contact history cannot hold: silently too few, never
    ("action a { placements: home value: 1 cap: 1 per 400d }",
     "6:38: error: a cap looks back at most 366d (the contact history a profile keeps)"),
    ("action a { placements: home value: 1 cap: 201 per 7d }",
     "6:38: error: a cap counts at most 200 contacts (the newest a profile keeps per"),
    ("action a { placements: home value: 1 cooldown: 400d }",
     "6:48: error: a cooldown looks back at most 366d"),
    ("action a { placements: home value: 1 suppress: 367d after 1 dismiss }",
     "6:48: error: a suppression looks back at most 366d"),
    ("action a { placements: home value: 1 suppress: 7d after 300 impression }",
     "6:38: error: a suppression counts at most 200 contacts"),
    ("events: " + ", ".join(f"e{k}" for k in range(300)),
     "6:1: error: at most 256 event types (what a profile keeps)"),
    ("policy { channel web: at most 2 per 53w }",
     "6:37: error: a policy looks back at most 366d"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  allocate: thompson(prior = normal_gamma(0, 1, 1, 1)) }",
     "8:36: error: a normal_gamma prior is for a continuous reward: write 'reward: click.value'"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  reward: conversion.value\n"
     "  allocate: thompson(prior = beta(1, 1)) }",
     "9:3: error: a beta prior is for a binary reward; a continuous reward"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  half_life: 30m }",
     "8:36: error: half_life must be at least 1h"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  winner: c }",
     "8:36: error: winner 'c' is not one of the arms (a, b)"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  reward: click.value\n"
     "  allocate: thompson(prior = normal_gamma(0, 0, 1, 1)) }",
     "9:3: error: normal_gamma(mu, kappa, alpha, beta): kappa, alpha and beta must be positive"),
    ("action a { placements: home value: 1 group: g }\n"
     "policy { group g: at most 1 per 1d  group g: at most 2 per 1d }",
     "7:37: error: group 'g' already has a policy at"),
    ("placement mail { channels: email  attribution: 400d }",
     "6:35: error: attribution is at most 366d (the contact history a profile keeps)"),
    ("placement mail { channels: email  attribution: 500ms }",
     "6:35: error: attribution must be at least 1s"),
]


@pytest.mark.parametrize(("rules", "expected"), CASES, ids=[c[1][:40] for c in CASES])
def test_broken_rule_reports_position_and_message(rules: str, expected: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_text(HEADER.lstrip("\n") + "\n" + rules + "\n", "r.arb")
    first = info.value.errors[0]
    text = f"{first.pos.line}:{first.pos.column}: {first.severity}: {first.message}"
    assert text.startswith(expected), text


def test_every_error_is_reported_in_one_run() -> None:
    result = build({"r.arb": HEADER + "segment a = profile.x > 1\nsegment b = profile.y > 1\n"})
    messages = [d.message for d in result.diagnostics if d.severity == "error"]
    assert len(messages) == 2 and "'x'" in messages[0] and "'y'" in messages[1]


def test_rendered_error_has_source_line_and_caret() -> None:
    with pytest.raises(RulesetError) as info:
        load_text("segment s = profile.nope > 1\n", "bad.arb")
    err = info.value
    assert err.errors[0].render(err.sources).splitlines() == [
        "bad.arb:1:13: error: unknown profile attribute 'nope' (declare it in the profile block)",
        "    segment s = profile.nope > 1",
        "                ^",
    ]


def test_unused_segment_is_a_warning_not_an_error() -> None:
    result = build({"r.arb": HEADER + "segment lonely = profile.spend > 1\n"})
    assert not result.failed
    assert any("'lonely' is not used" in d.message for d in result.diagnostics)


@pytest.mark.parametrize(("rules", "expected"), [
    ("segment s = profile.spend > 500 and profile.spend <= 100\n"
     "action a { placements: home value: 1 when: s }",
     "6:13: warning: segment 's' can never hold: the ranges of profile.spend"),
    ("segment s = 10 <= profile.spend and profile.spend < 10\n"
     "action a { placements: home value: 1 when: s }",
     "6:13: warning: segment 's' can never hold"),
    ("action a { placements: home value: 1 when: 1 > 2 }",
     "6:46: warning: 'when' of action 'a' is always false: the action can never be shown"),
    ("action a { placements: home value: 1 when: 2 > 1 }",
     "6:46: warning: 'when' of action 'a' is always true"),
    ("action a { placements: home value: 1 }\naction b { placements: home value: 1 }\n"
     "experiment e on home { arms: a, b  holdout: 10% }",
     "8:36: warning: placement 'home' has no fallback, so the holdout's customers are shown "
     "nothing and no outcome is counted for them"),
    ("action a { placements: home, home value: 1 }",
     "6:12: warning: placement 'home' is listed twice"),
])
def test_lint_warnings(rules: str, expected: str) -> None:
    result = build({"r.arb": HEADER.lstrip("\n") + "\n" + rules + "\n"})
    assert not result.failed
    texts = [f"{d.pos.line}:{d.pos.column}: {d.severity}: {d.message}"
             for d in result.diagnostics]
    assert any(t.startswith(expected) for t in texts), texts


def test_a_holdout_with_a_fallback_is_not_flagged() -> None:
    result = build({"r.arb": HEADER.replace("channels: web, app", "channels: web, app\n"
                                            "fallback: a") + """
action a { placements: home value: 1 }
action b { placements: home value: 1 }
action c { placements: home value: 1 }
experiment e on home { arms: b, c  holdout: 10% }
"""})
    assert not result.failed and not result.diagnostics, result.diagnostics


def test_overlapping_ranges_are_not_flagged() -> None:
    result = build({"r.arb": HEADER + "segment s = profile.spend >= 10 and profile.spend <= 10\n"
                                      "action a { placements: home value: 1 when: s }\n"})
    assert not any("never hold" in d.message for d in result.diagnostics)
    assert result.ruleset is not None and result.ruleset.cost > 0


DEEP = """
profile { x: number  s: string }
placement p { channels: web }
"""

# (what a rule nests n times: each compiles at the deepest n the limit allows)
NESTINGS = {
    "parentheses": lambda n: "(" * n + "profile.x > 1" + ")" * n,
    "not": lambda n: "not " * n + "profile.x > 1",
    "negation": lambda n: "-" * n + "profile.x > 1",
    "arithmetic": lambda n: "profile.x + (" * n + "profile.x" + ")" * n + " > 1",
    "calls": lambda n: "coalesce(" * n + "profile.x" + ", 1)" * n + " > 1",
    "and or": lambda n: "(profile.x > 1 and (profile.x < 9 or " * n + "profile.x > 2"
                        + "))" * n,
}


def _deepest(nest: Any) -> int:
    """The largest n whose segment parses within the nesting limit."""
    from dsl.parser import parse_text

    n = 1
    while not parse_text(DEEP + f"segment s = {nest(n + 1)}\n", "r.arb")[1]:
        n += 1
    return n


@pytest.mark.parametrize("kind", sorted(NESTINGS))
def test_a_rule_nested_past_the_limit_is_an_error_at_its_place_not_a_crash(kind: str) -> None:
    """Nesting deep enough made the checker (RecursionError) or Python's compiler (200
    parentheses) crash ``arbiter check`` and a server's reload. Now the deepest nesting
    the limit allows compiles and decides, and one level more (or three thousand) is an
    error at file:line:col."""
    nest = NESTINGS[kind]
    deepest = _deepest(nest)
    assert deepest >= 15  # (people nest a few levels; the limit is well above that)
    ruleset = load_text(DEEP + f"segment s = {nest(deepest)}\n"
                        "action a { placements: p  value: 1  when: s }\n")
    assert ruleset.segments[0].fn({"x": 5.0}, {}, {}, {}, 0.0) in (True, False)
    for n in (deepest + 1, 3000):
        with pytest.raises(RulesetError) as err:
            load_text(DEEP + f"segment s = {nest(n)}\n")
        (error,) = err.value.errors
        assert error.pos.line == 4 and error.pos.column > 12
        assert error.message.startswith("expression nested too deeply")


def test_a_long_chain_of_conditions_compiles_with_null_logic_intact() -> None:
    """A segment of 500 nullable conditions joined by 'or' (a list of postal codes):
    each operand nested the rest, and past ~200 Python's compiler refused the source.
    Now the chain is flat; null logic and short-circuiting are as before."""
    codes = " or ".join(f'profile.s == "{n:05d}"' for n in range(500))
    anded = " and ".join(f'profile.s != "{n:05d}"' for n in range(500))
    ruleset = load_text(DEEP + f"segment listed = {codes}\nsegment other = {anded}\n")
    listed, other = (s.fn for s in ruleset.segments)
    assert listed({"s": "00499"}, {}, {}, {}, 0.0) is True
    assert listed({"s": "99999"}, {}, {}, {}, 0.0) is False
    assert listed({"s": None}, {}, {}, {}, 0.0) is None  # null: not in it
    assert other({"s": "00000"}, {}, {}, {}, 0.0) is False
    assert other({"s": "99999"}, {}, {}, {}, 0.0) is True
    assert other({"s": None}, {}, {}, {}, 0.0) is None
    mixed = load_text(DEEP + "segment m = profile.s == \"a\" or profile.x > 1 or "
                      "profile.s == \"b\"\n").segments[0].fn
    assert mixed({"s": None, "x": 2.0}, {}, {}, {}, 0.0) is True  # a true one wins
    assert mixed({"s": None, "x": 0.0}, {}, {}, {}, 0.0) is None
    assert mixed({"s": "c", "x": 0.0}, {}, {}, {}, 0.0) is False


def test_template_blocks_nested_past_the_limit_are_one_error() -> None:
    from dsl.parser import MAX_TEMPLATE_NESTING

    def action(n: int) -> str:
        body = "{% if profile.x > 1 %}" * n + "hi" + "{% end %}" * n
        return DEEP + f'action a {{ placements: p  value: 1  content {{ t: "{body}" }} }}\n'

    load_text(action(MAX_TEMPLATE_NESTING))
    for n in (MAX_TEMPLATE_NESTING + 1, 3000):
        with pytest.raises(RulesetError) as err:
            load_text(action(n))
        (error,) = err.value.errors
        assert error.pos.line == 4 and "template blocks nested more than" in error.message
