"""Ruleset fuzzing: mutants of the example ruleset (bytes, tokens, lines, splices between
files, threshold values) through the loader ``arbiter check`` uses.

Properties: nothing but a RulesetError escapes; every error points at a real file,
line and column; every mutant that compiles decides for a fixed set of customers on
every placement and takes feedback, with no rule failing at run time. The normal test
run tries a short derandomized sample; ``make fuzz`` a long one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given

from adapters.memory import MemoryStore
from dsl.diagnostics import RulesetError
from dsl.loader import load_sources, read_sources
from dsl.ruleset import Ruleset
from engine.requests import InvalidArgument
from engine.service import Arbiter
from tests.conftest import RETAIL
from tests.fuzzing import fuzz_settings
from tests.rule_mutations import mutated

FUZZ = fuzz_settings("ARBITER_FUZZ_MUTANTS", 150)
SOURCES = {str(Path(k).relative_to(RETAIL)): v for k, v in read_sources(RETAIL).items()}
COUNTS: Counter[str] = Counter()
NOW = 1_767_614_400.0


class RuntimeFailures(logging.Handler):
    """Records every log line with a traceback (a rule that failed at run time)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def failures() -> Iterator[RuntimeFailures]:
    handler = RuntimeFailures()
    logging.getLogger("engine").addHandler(handler)
    yield handler
    logging.getLogger("engine").removeHandler(handler)
    print(f"\nrules fuzz: {COUNTS['rejected'] + COUNTS['compiled']} mutants")
    for key, n in sorted(COUNTS.items()):
        print(f"  {key}: {n}")
    out = os.environ.get("ARBITER_FUZZ_REPORT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rules.json").write_text(json.dumps(COUNTS, indent=1))


def _customers(arbiter: Arbiter) -> list[str]:
    """An unknown customer, a VIP, a cart abandoner, a reader, a traited one."""
    track = arbiter.track
    day = 86400.0
    for kind, user in enumerate(("vip", "cart", "reader", "traited")):
        try:
            if kind == 0:
                track(user_id=user, event_type="purchase", properties={"value": 700.0},
                      at=NOW - 3 * day)
                for d in range(6):
                    track(user_id=user, event_type="visit", at=NOW - (d + 0.5) * day)
            elif kind == 1:
                track(user_id=user, event_type="add_to_cart", properties={"value": 80.0},
                      at=NOW - 30 * 3600)
            elif kind == 2:
                track(user_id=user, event_type="content_view", at=NOW - 60)
            else:
                track(user_id=user, event_type="visit", at=NOW - day,
                      traits={"tier": "gold", "email_opt_in": True,
                              "consents": ["email_marketing"]})
        except InvalidArgument:  # the mutant renamed an event or a trait: fine
            pass
    return ["new", "vip", "cart", "reader", "traited"]


def _exercise(ruleset: Ruleset) -> None:
    arbiter = Arbiter(ruleset, MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    for user in _customers(arbiter):
        for placement in ruleset.placements.values():
            for channel in placement.channels or ("",):
                try:
                    decision = arbiter.decide(user_id=user, placement=placement.name,
                                              channel=channel, explain=True,
                                              context={})
                except InvalidArgument:
                    continue  # a context key the mutant made required, say
                if decision.actions:
                    first = decision.actions[0].action_id
                    for outcome in ("impression", "click"):
                        arbiter.feedback(decision_id=decision.decision_id, action_id=first,
                                         outcome=outcome, at=NOW)
    arbiter.learn()


@FUZZ
@given(sources=mutated(SOURCES))
def test_mutants_are_positioned_errors_or_rulesets_that_decide(
        failures: RuntimeFailures, sources: dict[str, str]) -> None:
    try:
        ruleset = load_sources(sources)
    except RulesetError as err:
        COUNTS["rejected"] += 1
        assert err.diagnostics, "an error without a diagnostic"
        for d in err.diagnostics:
            lines = sources.get(d.pos.file)
            assert lines is not None, f"unknown file in {d.pos}: {d.message}"
            assert 1 <= d.pos.line <= len(lines.splitlines()) + 1, (str(d.pos), d.message)
            assert d.pos.column >= 1, (str(d.pos), d.message)
        return
    COUNTS["compiled"] += 1
    before = len(failures.records)
    _exercise(ruleset)
    failed = failures.records[before:]
    assert not failed, [r.getMessage() for r in failed]
    COUNTS["compiled and decided"] += 1
