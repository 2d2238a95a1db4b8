"""thresholds.toml overrides declared thresholds; errors are positioned; reloads pick it up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.memory import MemoryStore
from dsl.diagnostics import RulesetError
from dsl.loader import load_path, load_sources
from engine.reloader import RulesetReloader
from engine.service import Arbiter
from tests.conftest import RETAIL

RULES = """
thresholds { spend_p90: number = 500  label: string = "big" }
profile { spend: number = 0 }
placement p { channels: web }
segment big = profile.spend > thresholds.spend_p90
action a { placements: p value: 1 when: big content { h: "{{ thresholds.label }}" } }
"""


def test_default_then_override() -> None:
    default = load_sources({"r/rules.arb": RULES})
    assert default.segments[0].fn({"spend": 600.0}, {}, {}, {}, 0.0, None) is True
    overridden = load_sources({"r/rules.arb": RULES, "r/thresholds.toml": "spend_p90 = 700\n"})
    assert overridden.segments[0].fn({"spend": 600.0}, {}, {}, {}, 0.0, None) is False
    assert overridden.revision != default.revision
    # folded into the code as a constant
    assert 700.0 in overridden.segments[0].fn.__code__.co_consts


@pytest.mark.parametrize(("toml", "message"), [
    ("\nspend_p99 = 1\n", "r/thresholds.toml:2:1: error: 'spend_p99' is not a declared threshold"),
    ("spend_p90 = \"x\"\n", "r/thresholds.toml:1:13: error: threshold 'spend_p90' is a number, "
     "not a string: spend_p90 = 500"),
    ("spend_p90 = \n", "r/thresholds.toml:1:13: error: invalid TOML"),
    ("spend_p90 = nan\n", "r/thresholds.toml:1:13: error: threshold 'spend_p90' must be"),
    ("spend_p90 = inf\n", "r/thresholds.toml:1:13: error: threshold 'spend_p90' must be"),
    ("spend_p90 =  -inf\n", "r/thresholds.toml:1:14: error: threshold 'spend_p90' must be"),
    ("spend_p90 = 1e400\n", "r/thresholds.toml:1:13: error: threshold 'spend_p90' must be"),
])
def test_bad_overrides_are_positioned_errors(toml: str, message: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_sources({"r/rules.arb": RULES, "r/thresholds.toml": toml})
    assert info.value.render().startswith(message), info.value.render()


def test_a_threshold_needs_a_default() -> None:
    with pytest.raises(RulesetError) as info:
        load_sources({"r.arb": "thresholds { x: number }\n"})
    assert "threshold 'x' needs a default value" in info.value.render()


def test_reload_picks_up_a_changed_thresholds_file(tmp_path: Path) -> None:
    rules = tmp_path / "retail"
    shutil.copytree(RETAIL, rules)
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    before = arb.ruleset.revision
    (rules / "thresholds.toml").write_text("vip_spend = 9000\n")
    result = reloader.poll()
    assert result is not None and result.accepted and arb.ruleset.revision != before
    (rules / "thresholds.toml").write_text("vip_spend = \"lots\"\n")
    result = reloader.poll()
    assert result is not None and not result.accepted
    assert "threshold 'vip_spend' is a number" in result.render()


@pytest.mark.parametrize(("source", "where"), [
    (RULES.replace("= 500", "= " + "9" * 400), "r/rules.arb:2:34"),
    (RULES.replace("> thresholds.spend_p90", "> " + "1" * 320), "r/rules.arb:5:31"),
])
def test_a_literal_too_large_for_a_float_is_a_positioned_error(source: str, where: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_sources({"r/rules.arb": source})
    assert info.value.render().startswith(f"{where}: error: number "), info.value.render()
    assert "is too large" in info.value.render()


def test_a_non_finite_threshold_edit_is_rejected_and_the_previous_ruleset_serves(
        tmp_path: Path) -> None:
    rules = tmp_path / "retail"
    shutil.copytree(RETAIL, rules)
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    before = arb.ruleset.revision
    (rules / "thresholds.toml").write_text("vip_spend = nan\n")
    result = reloader.poll()
    assert result is not None and not result.accepted
    assert arb.ruleset.revision == before
    assert arb.decide(user_id="u", placement="homepage_banner", channel="web").actions


def test_an_integer_too_large_for_a_float_is_a_positioned_error_not_a_crash() -> None:
    """Found by the rules fuzzer: a 400-digit integer raised OverflowError in the loader."""
    with pytest.raises(RulesetError) as info:
        load_sources({"r/rules.arb": RULES, "r/thresholds.toml": f"spend_p90 = {'9' * 400}\n"})
    assert info.value.render().startswith(
        "r/thresholds.toml:1:13: error: threshold 'spend_p90' must be a finite number")
