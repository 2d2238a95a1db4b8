"""arbiter test: the example ruleset's tests pass; wrong expectations fail with locations."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize(("case", "message"), [
    ('now = "yesterday"', "now: invalid RFC3339 encoded datetime"),
    ('now = "2026-01-05T12:00:00"', "now: 2026-01-05T12:00:00 needs its offset"),
    ('limit = "two"', "limit: expected `int`, got `str`"),
    ("context = [1, 2]", "context: expected `object`, got `array`"),
    ('profile = "vip"', "profile: expected `object`, got `str`"),
    ('profile.events = { type = "visit" }', "profile.events: expected `array`, got `object`"),
    ('profile.events = [{ type = "visit", value = "lots" }]',
     "profile.events[0].value: expected `float`, got `str`"),
    ('profile.events = [{ type = "visit", when = "2h" }]',
     "profile.events[0]: unknown key `when`"),
    ('profile.contacts = [{ action = "cart_reminder", ago = 2 }]',
     "profile.contacts[0].ago: expected `str`, got `int`"),
    ('profile.traits = { first_name = "Ann" }\nprofile.trait = {}', "profile: unknown key `trait`"),
    ('expect.content = "Hello"', "expect.content: expected `object`, got `str`"),
    ('expect.top = ["a"]', "expect.top: expected `str | null`, got `array`")])
def test_a_malformed_case_fails_with_its_field_never_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    """Each of these crashed ``arbiter test`` (and, in a profile file, ``explain`` and
    ``decide --profile``) with a Python traceback: ValueError, AttributeError, TypeError."""
    tests = tmp_path / "shape.test.toml"
    expect = "" if "expect." in case else 'expect.none = false\n'
    tests.write_text(f'[[test]]\nname = "shape"\nplacement = "email"\n{case}\n{expect}')
    assert main(["test", str(RETAIL), "--tests", str(tests)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {tests}:1: shape" in out and message in out
    assert out.rstrip().endswith("0 passed, 1 failed")


TIMED_RULES = '''
profile {
  renewal: timestamp
  consents: list
}
context {
  since: timestamp
  tags: list
}
events: visit
placement app { channels: app }
action renew_now {
  placements: app
  when: profile.renewal - now <= 30d and profile.renewal > now
  value: 1
}
action welcome_back {
  placements: app
  when: context.since < now - 1d and "sale" in context.tags
  value: 1
}
'''


def test_timestamps_are_written_in_files_as_iso_date_times_or_epoch_seconds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON profile file could not hold a timestamp trait at all (a string and a
    number were both refused), nor could a test case's context."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "main.arb").write_text(TIMED_RULES)
    (rules / "t.test.toml").write_text(
        '[[test]]\nname = "iso text"\nplacement = "app"\n'
        'profile.traits = { renewal = "2026-01-20T00:00:00Z" }\n'
        'context = { since = "2026-01-01T00:00:00+01:00", tags = ["sale"] }\n'
        'expect.eligible = ["renew_now", "welcome_back"]\n'
        '[[test]]\nname = "epoch seconds and TOML date-times"\nplacement = "app"\n'
        "profile.traits = { renewal = 1768867200 }\n"
        'context = { since = 2026-01-01T00:00:00Z, tags = ["sale"] }\n'
        'expect.eligible = ["renew_now", "welcome_back"]\n'
        '[[test]]\nname = "renewal past"\nplacement = "app"\n'
        'profile.traits = { renewal = "2025-12-20T00:00:00Z" }\n'
        'expect.not_eligible = ["renew_now"]\n')
    assert main(["test", str(rules)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    profile = tmp_path / "p.json"
    for renewal, eligible in (('"2099-01-20T00:00:00Z"', False), ("4102444800", False),
                              (f'"{_in_days(10)}"', True)):
        profile.write_text(json.dumps({"traits": {"renewal": json.loads(renewal)}}))
        assert main(["explain", str(rules), "--profile", str(profile), "--placement", "app",
                     "--context", f"since={_in_days(-3)}", "tags=sale,new"]) == 0
        out = capsys.readouterr().out
        assert ("ok eligibility when: profile.renewal" in out) is eligible, out
        assert "ok eligibility when: context.since" in out
    for renewal, message in (('"2026-01-20"', "'2026-01-20' has no offset"),
                             ('"soon"', "not 'soon'"), ("1e30", "1e+30 is out of range")):
        profile.write_text(json.dumps({"traits": {"renewal": json.loads(renewal)}}))
        assert main(["explain", str(rules), "--profile", str(profile), "--placement",
                     "app"]) == 2
        assert "traits.renewal: must be an ISO 8601 date-time with its offset" in (
            err := capsys.readouterr().err) and message in err


def _in_days(days: float) -> str:
    import datetime as dt
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


BOM = "\ufeff"


def test_files_saved_with_a_byte_order_mark_are_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Windows editors and Excel's "CSV UTF-8" start a file with a byte order mark: a
    rule file so saved was a syntax error at 1:1 ("unexpected character '\\ufeff'"), a
    catalogue's first column was named "\\ufeffid" (no item had an id), and TOML and JSON
    files failed to parse."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "main.arb").write_text(BOM + TIMED_RULES.replace("\n", "\r\n") + (
        "items { name: string }\r\nthresholds { days: number = 30 }\r\n"), encoding="utf-8")
    (rules / "items.csv").write_text(BOM + "id,name\r\nsku-1,Scarf\r\n", encoding="utf-8")
    (rules / "thresholds.toml").write_text(BOM + "days = 10\n", encoding="utf-8")
    (rules / "t.test.toml").write_text(
        BOM + '[[test]]\nname = "bom"\nplacement = "app"\n'
        'profile.traits = { renewal = "2026-01-20T00:00:00Z" }\n'
        'expect.eligible = ["renew_now"]\n', encoding="utf-8")
    assert main(["check", str(rules)]) == 0, capsys.readouterr()
    assert main(["test", str(rules)]) == 0, capsys.readouterr().out
    assert main(["items", "check", str(rules / "items.csv"), "--rules", str(rules)]) == 0
    profile = tmp_path / "p.json"
    profile.write_text(BOM + json.dumps({"traits": {"renewal": _in_days(5)}}), encoding="utf-8")
    capsys.readouterr()
    assert main(["explain", str(rules), "--profile", str(profile), "--placement", "app"]) == 0
    assert "ok eligibility when: profile.renewal" in capsys.readouterr().out
    from engine.cli.common import json_lines  # arbiter track and decide --batch files
    lines = tmp_path / "users.jsonl"
    lines.write_text(BOM + '{"user_id": "ann"}\n', encoding="utf-8")
    assert [item for _, _, item in json_lines(lines)] == [{"user_id": "ann"}]


CHANNEL_CAP_RULES = """
placement email_digest { channels: email  slots: 1 }
placement sms_alert { channels: sms  slots: 1 }
action winback {
  placements: email_digest, sms_alert
  value: 1
}
policy { channel sms: at most 2 per 7d }
"""

CONTACTS_ON_SMS = """
[[test]]
name = "two SMS contacts this week: the SMS cap holds"
placement = "sms_alert"
profile.contacts = [{ action = "winback", ago = "1d" }, { action = "winback", ago = "2d" }]
expect.none = true

[[test]]
name = "the same contacts named as emails do not count on SMS"
placement = "sms_alert"
profile.contacts = [{ action = "winback", ago = "1d", channel = "email" },
                    { action = "winback", ago = "2d", channel = "email" }]
expect.top = "winback"
"""


def test_a_contact_without_a_channel_was_on_the_channel_decided_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A test of an SMS decision whose customer "had two impressions" of an action shown
    on email and SMS: the contacts were put on the action's first placement's channel
    (email), so the SMS channel cap never counted them and the case failed for a reason
    the test's author could not see. A contact without a channel is now on the channel
    decided for, when the action can be shown there."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "main.arb").write_text(CHANNEL_CAP_RULES)
    (rules / "caps.test.toml").write_text(CONTACTS_ON_SMS)
    assert main(["test", str(rules)]) == 0, capsys.readouterr().out
    profile = tmp_path / "p.json"  # arbiter decide --profile reads them the same way
    profile.write_text(json.dumps({"contacts": [{"action": "winback", "ago": "1d"},
                                                {"action": "winback", "ago": "2d"}]}))
    capsys.readouterr()
    assert main(["decide", "--rules", str(rules), "--user", "u", "--placement", "sms_alert",
                 "--profile", str(profile)]) == 0
    assert "winback" not in capsys.readouterr().out
