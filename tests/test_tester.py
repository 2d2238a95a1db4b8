"""arbiter test: the example ruleset's tests pass; wrong expectations fail with locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from tests.conftest import RETAIL

FAILING = '''
[[test]]
name = "wrong on purpose"
placement = "email"
profile.traits = { first_name = "Ann", email_opt_in = true }
profile.events = [{ type = "add_to_cart", value = 80, ago = "2h" }]
expect.segments = ["cart_abandoner"]
expect.top = "cart_reminder"
expect.content = { "welcome_series.subject" = "Hello" }

[[test]]
name = "typos are reported, not ignored"
placement = "email"
expect.segmnts = ["x"]
expect.eligible = ["no_such_action"]

[[test]]
name = "bad input"
placement = "email"
profile.events = [{ type = "visit", ago = "yesterday" }]
expect.none = true
'''


def test_example_ruleset_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(RETAIL)]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "segments matched 9/9" in out


def test_failures_point_at_the_rules(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "wrong.test.toml"
    tests.write_text(FAILING)
    assert main(["test", str(RETAIL), "--tests", str(tests)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {tests}:2: wrong on purpose" in out
    assert "expected the customer in segment 'cart_abandoner'" in out
    assert "segments.arb:" in out and "now - last(add_to_cart) >= 24h" in out
    assert "expected top action 'cart_reminder', got welcome_series" in out
    assert "NO eligibility when: cart_abandoner and profile.email_opt_in" in out
    assert "email.arb:6:3" in out  # where cart_reminder's condition is
    assert "content welcome_series.subject: expected 'Hello', got 'Welcome" in out
    assert "unknown expectation 'segmnts'" in out
    assert "expect.eligible: unknown action 'no_such_action'" in out
    assert "events[0].ago: not a duration: 'yesterday'" in out
    assert out.rstrip().endswith("0 passed, 3 failed")


def test_malformed_toml_is_an_error_with_position(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "bad.test.toml"
    tests.write_text("[[test]]\nname = \n")
    assert main(["test", str(RETAIL), "--tests", str(tests)]) == 1
    assert "(at line 2, column 8)" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "message"), [
    ('# cases\n[[tests]]\nname = "x"\n', ":2: unknown key 'tests': a test file holds [[test]]"),
    ('[test]\nname = "x"\n', ":1: write each case as a [[test]] table, not [test]"),
    ('title = "mine"\n[[test]]\nname = "x"\n', ":1: unknown key 'title'")])
def test_a_test_file_that_holds_no_test_tables_is_an_error_not_a_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    """``[[tests]]`` (or any other key) was ignored: "no tests found", exit 0, and a CI
    step that ran nothing passed."""
    tests = tmp_path / "typo.test.toml"
    tests.write_text(text)
    assert main(["test", str(RETAIL), "--tests", str(tests)]) == 1
    assert f"{tests}{message}" in capsys.readouterr().out


def test_explain_prints_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('traits = { email_opt_in = true }\n'
                       'events = [{ type = "add_to_cart", value = 80, ago = "26h" }]\n'
                       'contacts = [{ action = "cart_reminder", outcome = "impression", '
                       'ago = "1h" }]\n')
    assert main(["explain", str(RETAIL), "--profile", str(profile), "--placement", "email"]) == 0
    out = capsys.readouterr().out
    assert "- cart_reminder" in out
    assert "NO cap frequency: 1 impressions, cap: 1 per 1d" in out
