"""``arbiter test``: ruleset tests written next to the rules, in ``*.test.toml`` files.

Each ``[[test]]`` gives a customer (traits, events, outcome history), a request
(placement, channel, context) and expectations about the decision::

    [[test]]
    name = "a cart abandoner is reminded by email"
    placement = "email"
    profile.traits = { first_name = "Ann", email_opt_in = true }
    profile.events = [ { type = "add_to_cart", value = 80, ago = "26h" } ]
    expect.segments = ["cart_abandoner"]
    expect.top = "cart_reminder"
    expect.content = { "cart_reminder.subject" = "Ann, you left something in your cart" }

Expectations: ``segments`` / ``not_segments`` (the customer is / is not in them),
``eligible`` / ``not_eligible`` (actions that pass / fail eligibility and caps),
``top`` (the first action), ``actions`` (the exact ranked list), ``none`` (no action),
``content`` (``"ACTION.FIELD" = "text"``). Every case runs on a fresh in-memory
store with a fixed clock and seed, so results are reproducible. Experiment arms
are drawn by Thompson sampling: assert them with ``eligible``, not ``top``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from dsl.ruleset import Ruleset, Segment
from engine.cli.scenario import Scenario, apply_population, apply_scenario, shaped
from engine.cli.typed_values import declared_map
from engine.decide.decision import ActionTrace, Decision
from engine.decide.tracer import Tracer
from engine.ports import StoreFactory
from engine.requests import InvalidArgument
from engine.service import Arbiter

TEST_SUFFIX = ".test.toml"
DEFAULT_NOW = datetime.fromisoformat("2026-01-05T12:00:00+00:00").timestamp()


class Expect(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a case expects of the decision."""

    segments: tuple[str, ...] = ()
    not_segments: tuple[str, ...] = ()
    eligible: tuple[str, ...] = ()
    not_eligible: tuple[str, ...] = ()
    top: str | None = None
    actions: tuple[str, ...] | None = None
    none: bool = False
    content: dict[str, str] = {}


class Case(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ``[[test]]``: a customer, a request and what the decision must look like."""

    name: str = "(unnamed)"
    placement: str = ""
    channel: str = ""
    context: dict[str, Any] = {}
    limit: int = 0
    now: datetime | None = None
    profile: Scenario = Scenario()
    expect: Expect | None = None
    population: str | None = None


CASE_KEYS = set(Case.__struct_fields__)
EXPECT_KEYS = set(Expect.__struct_fields__)


@dataclass
class CaseResult:
    name: str
    location: str  # file:line of the case
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Coverage:
    """Which rules the tests exercised, over all cases."""

    segments_matched: set[str] = field(default_factory=set)
    actions_eligible: set[str] = field(default_factory=set)
    actions_shown: set[str] = field(default_factory=set)

    def summary(self, ruleset: Ruleset) -> list[str]:
        segments = [s.name for s in ruleset.segments]
        actions = sorted(ruleset.actions)
        lines = [
            f"coverage: segments matched {len(self.segments_matched)}/{len(segments)}, "
            f"actions eligible {len(self.actions_eligible)}/{len(actions)}, "
            f"actions shown {len(self.actions_shown)}/{len(actions)}"]
        never_seg = [s for s in segments if s not in self.segments_matched]
        never_act = [a for a in actions if a not in self.actions_eligible]
        never_shown = [a for a in actions if a not in self.actions_shown]
        if never_seg:
            lines.append(f"  segments never matched: {', '.join(never_seg)}")
        if never_act:
            lines.append(f"  actions never eligible: {', '.join(never_act)}")
        if never_shown:
            lines.append(f"  actions never shown: {', '.join(never_shown)}")
        return lines


def _epoch(when: datetime) -> float:
    """A case's ``now`` in epoch seconds; it needs its offset (a time without one would be
    read in the local zone of whoever runs the tests)."""
    if when.tzinfo is None:
        raise InvalidArgument("now", f"{when.isoformat()} needs its offset (Z or +00:00)")
    return when.timestamp()


def discover(root: str | Path) -> list[Path]:
    root = Path(root)
    return [root] if root.is_file() else sorted(root.rglob(f"*{TEST_SUFFIX}"))


def _case_lines(text: str) -> list[int]:
    """1-based line of each ``[[test]]`` header, in order."""
    return [i for i, line in enumerate(text.splitlines(), 1)
            if re.match(r"\s*\[\[\s*test\s*\]\]", line)]


def load_cases(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file:line, case) pairs; raises ValueError with the file's position on bad TOML."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from err
    for key, value in data.items():  # ([[tests]] or [[case]] ran nothing, and passed)
        if key != "test" or not isinstance(value, list):
            line = next((n for n, text_line in enumerate(text.splitlines(), 1)
                         if re.match(r"\s*(\[{1,2}\s*)?" + re.escape(key) + r"\b", text_line)),
                        1)
            raise ValueError(f"{path}:{line}: " + (
                "write each case as a [[test]] table, not [test]" if key == "test"
                else f"unknown key '{key}': a test file holds [[test]] tables"))
    cases = data.get("test", [])
    lines = _case_lines(text)
    return [(f"{path}:{lines[i] if i < len(lines) else 1}", case)
            for i, case in enumerate(cases)]


class CaseTracer(Tracer):
    """What one case's decision touched: segments matched, actions that passed eligibility."""

    enabled = True

    def __init__(self) -> None:
        self.segments: set[str] = set()
        self.eligible: set[str] = set()

    def segment(self, segment: Segment, matched: bool) -> None:
        if matched:
            self.segments.add(segment.name)

    def eligibility(self, action_id: str, eligible: bool) -> None:
        if eligible:
            self.eligible.add(action_id)


def _why(trace: ActionTrace | None) -> str:
    if trace is None:
        return ""
    return "".join(f"\n      {'ok' if r.passed else 'NO'} {r.kind} {r.name}: {r.detail}"
                   + (f"  ({r.location})" if r.location else "") for r in trace.reasons)


class CaseRunner:
    """Runs one case against a ruleset and checks its expectations."""

    def __init__(self, ruleset: Ruleset, coverage: Coverage, store_factory: StoreFactory
                 ) -> None:
        self.ruleset = ruleset
        self.coverage = coverage
        self.store_factory = store_factory

    def run(self, location: str, data: Mapping[str, Any]) -> CaseResult:
        result = CaseResult(str(data.get("name", "(unnamed)")), location)
        result.failures += self._key_problems(data) + self._name_problems(data)
        if result.failures:
            return result
        try:
            case = shaped(data, Case, "", "")
            now = DEFAULT_NOW if case.now is None else _epoch(case.now)
        except InvalidArgument as err:
            result.failures.append(f"invalid test case: {err}")
            return result
        expect = case.expect or Expect()
        arbiter = Arbiter(self.ruleset, self.store_factory(lambda: now), seed=0,
                          clock=lambda: now)
        tracer = CaseTracer()
        try:
            if case.population is not None:  # other customers first: what clusters learn
                folder = Path(location.rsplit(":", 1)[0]).parent
                apply_population(arbiter, folder / case.population, now)
            apply_scenario(arbiter, "test-user", case.profile, now, case.placement,
                           case.channel)
            decision = arbiter.decide(
                user_id="test-user", placement=case.placement, channel=case.channel,
                context=declared_map("context", case.context, self.ruleset.context_schema),
                limit=case.limit, explain=True, tracer=tracer)
        except InvalidArgument as err:
            result.failures.append(f"invalid test input: {err}")
            return result
        except OSError as err:
            result.failures.append(f"population: {err}")
            return result
        self.coverage.segments_matched |= tracer.segments
        self.coverage.actions_eligible |= tracer.eligible
        self.coverage.actions_shown.update(a.action_id for a in decision.actions)
        self._check(decision, tracer, expect, result)
        return result

    @staticmethod
    def _key_problems(case: Mapping[str, Any]) -> list[str]:
        problems = [f"unknown key '{k}' (expected one of {', '.join(sorted(CASE_KEYS))})"
                    for k in case if k not in CASE_KEYS]
        expect = case.get("expect", {})
        if not expect:
            problems.append("the case expects nothing: add an 'expect' table")
        elif isinstance(expect, Mapping):
            problems += [f"unknown expectation '{k}' (expected one of "
                         f"{', '.join(sorted(EXPECT_KEYS))})" for k in expect
                         if k not in EXPECT_KEYS]
        return problems

    def _name_problems(self, case: Mapping[str, Any]) -> list[str]:
        """Segments and actions the case's expectations name that the rules do not have
        (what is not a list of names is left to the shape check)."""
        expect = case.get("expect")
        if not isinstance(expect, Mapping):
            return []
        names = {s.name for s in self.ruleset.segments}
        problems = []
        for key, known, kind in (("segments", names, "segment"),
                                 ("not_segments", names, "segment"),
                                 ("eligible", self.ruleset.actions, "action"),
                                 ("not_eligible", self.ruleset.actions, "action"),
                                 ("actions", self.ruleset.actions, "action")):
            listed = expect.get(key)
            if isinstance(listed, list):
                problems += [f"expect.{key}: unknown {kind} '{name}'" for name in listed
                             if isinstance(name, str) and name not in known]
        return problems

    def _segment_failure(self, name: str, expected: bool) -> str:
        segment = next(s for s in self.ruleset.segments if s.name == name)
        state = "in" if expected else "not in"
        return (f"expected the customer {state} segment '{name}'\n"
                f"      {segment.pos}: segment {name} = {segment.source}")

    def _check(self, decision: Decision, tracer: CaseTracer, expect: Expect,
               result: CaseResult) -> None:
        matched = set(decision.segments)
        traces = {t.action_id: t for t in decision.traces}
        shown = [a.action_id for a in decision.actions]
        fail = result.failures.append
        for name in expect.segments:
            if name not in matched:
                fail(self._segment_failure(name, True))
        for name in expect.not_segments:
            if name in matched:
                fail(self._segment_failure(name, False))
        for action in expect.eligible:
            trace = traces.get(action)
            if trace is None:
                fail(f"expected '{action}' to be eligible, but it is not an action of "
                     f"placement '{decision.placement}'")
            elif action not in tracer.eligible:
                fail(f"expected '{action}' to be eligible{_why(trace)}")
        for action in expect.not_eligible:
            trace = traces.get(action)
            if trace is not None and action in tracer.eligible:
                fail(f"expected '{action}' not to be eligible{_why(trace)}")
        if expect.top is not None and shown[:1] != [expect.top]:
            got = shown[0] if shown else "nothing"
            fail(f"expected top action '{expect.top}', got {got}{_why(traces.get(expect.top))}")
        if expect.actions is not None and shown != list(expect.actions):
            fail(f"expected actions {list(expect.actions)}, got {shown}")
        if expect.none and shown:
            fail(f"expected no action, got {shown}")
        for key, text in expect.content.items():
            action_id, _, name = key.partition(".")
            ranked = next((a for a in decision.actions if a.action_id == action_id), None)
            if ranked is None:
                fail(f"expected content of '{action_id}', but it was not shown (shown: {shown})")
            elif ranked.content.get(name) != text:
                fail(f"content {key}: expected {text!r}, got {ranked.content.get(name)!r}")


@dataclass
class Report:
    results: list[CaseResult]
    coverage: Coverage
    errors: list[str]

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results) + len(self.errors)


def run_tests(ruleset: Ruleset, paths: list[Path], store_factory: StoreFactory) -> Report:
    """Every case in ``paths``, each on a fresh store from ``store_factory``."""
    coverage = Coverage()
    runner = CaseRunner(ruleset, coverage, store_factory)
    results: list[CaseResult] = []
    errors: list[str] = []
    for path in paths:
        try:
            cases = load_cases(path)
        except ValueError as err:
            errors.append(str(err))
            continue
        results += [runner.run(location, case) for location, case in cases]
    return Report(results, coverage, errors)
