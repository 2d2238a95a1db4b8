"""arbiter fmt: canonical, idempotent, meaning-preserving, and no comment is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsl.ast import shape
from dsl.diagnostics import RulesetError
from dsl.formatter import format_text, scan_comments
from dsl.parser import parse_text
from engine.cli import main
from tests.conftest import RETAIL

MESSY = '''# header comment

profile{ spend : number=0   # money
  name: string pii }
segment   big =profile.spend>500 and(profile.name is not null or profile.spend>9000)
# about the action
action a{placements:home
  # before when
  when : big value:10 cap:3 per 7d
  content{h:"Hi {{profile.name|default(\\"you\\")|upper}}, \\"quoted\\""}
  # dangling at the end of the block
}
experiment e on home { arms: a, b  allocate: thompson(prior = beta(2, 3.5)) }
# the end
'''


def test_example_ruleset_is_formatted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fmt", str(RETAIL), "--check"]) == 0


def assert_formats_well(text: str) -> str:
    before, _ = parse_text(text, "t.arb")
    assert before is not None
    out = format_text(text, "t.arb")
    after, diagnostics = parse_text(out, "t.arb")
    assert after is not None and not diagnostics, out
    assert shape(after.items) == shape(before.items), out
    assert format_text(out, "t.arb") == out, "not idempotent"
    assert sorted(c.text for c in scan_comments(out)) == sorted(
        c.text for c in scan_comments(text)), out
    return out


def test_messy_file() -> None:
    out = assert_formats_well(MESSY)
    assert out.splitlines()[:4] == ["# header comment", "", "profile {",
                                    "  spend: number = 0  # money"]
    assert "  # before when\n  when: big\n" in out
    assert "  # dangling at the end of the block\n}" in out
    assert 'h: "Hi {{ profile.name | default(\\"you\\") | upper }}, \\"quoted\\""' in out
    assert "allocate: thompson(prior = beta(2, 3.5))" in out
    assert out.endswith("# the end\n")


@pytest.mark.parametrize("path", sorted(RETAIL.glob("*.arb")), ids=lambda p: p.name)
def test_retail_files(path: Path) -> None:
    assert format_text(path.read_text(), str(path)) == path.read_text()


def test_experiment_options_round_trip() -> None:
    out = assert_formats_well(
        "experiment e on home{arms:a,b allocate:weights(70,30) holdout:12.5% "
        'salt:"s-1" layer:hero reward:conversion}\n')
    assert out.splitlines() == [
        "experiment e on home {",
        "  arms: a, b",
        "  allocate: weights(70, 30)",
        "  holdout: 12.5%",
        '  salt: "s-1"',
        "  layer: hero",
        "  reward: conversion",
        "}",
    ]


def test_long_conditions_break_before_and_or() -> None:
    text = ("segment s = profile.aaaaaaaaaaaaaaa > 1 and profile.bbbbbbbbbbbbbbbbbbb < 2 and "
            "profile.cccccccccccccccccc == 3 and profile.dddddddd is null\n")
    out = assert_formats_well(text)
    assert out.splitlines() == [
        "segment s =",
        "  profile.aaaaaaaaaaaaaaa > 1",
        "  and profile.bbbbbbbbbbbbbbbbbbb < 2",
        "  and profile.cccccccccccccccccc == 3",
        "  and profile.dddddddd is null",
    ]



def test_long_lists_wrap_under_the_width_aligned_after_their_field() -> None:
    """A cluster's or score's features (and any list) were joined on one line however
    long: 140 characters in the example's own segments.arb."""
    features = ", ".join(f"f{i} = count(visit, within={i + 1}d)" for i in range(6))
    events = ", ".join(f"event_number_{i}" for i in range(12))
    out = assert_formats_well(f"events: {events}\ncluster c {{ features: {features}  k: 2 }}\n")
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), out
    assert lines[0].startswith("events: event_number_0,") and lines[1].startswith(
        "        event_number_")
    feature_lines = [line for line in lines if "= count(visit" in line]
    assert len(feature_lines) == 3 and feature_lines[0].startswith("  features: f0 = ")
    assert feature_lines[1].startswith(" " * 12 + "f")

def test_unparsable_file_is_an_error_and_untouched(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RulesetError):
        format_text("segment = 1", "x.arb")
    bad = tmp_path / "x.arb"
    bad.write_text("segment = 1\n")
    assert main(["fmt", str(tmp_path)]) == 1
    assert bad.read_text() == "segment = 1\n"
    assert "x.arb:1:9: error: syntax error" in capsys.readouterr().err


def test_fmt_rewrites_and_check_reports(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "r.arb"
    rules.write_text("segment  s=profile.x>1\n")
    assert main(["fmt", str(tmp_path), "--check", "--diff"]) == 1
    assert "+segment s = profile.x > 1" in capsys.readouterr().out
    assert main(["fmt", str(tmp_path), "--diff"]) == 1  # shows, and changes nothing
    assert "+segment s = profile.x > 1" in capsys.readouterr().out
    assert rules.read_text() == "segment  s=profile.x>1\n"
    assert main(["fmt", str(tmp_path)]) == 0
    assert rules.read_text() == "segment s = profile.x > 1\n"
    assert main(["fmt", str(tmp_path), "--check"]) == 0


# ---- property tests on generated rule files -------------------------------------------
names = st.sampled_from(["a", "b", "vip", "cart_abandoner"])
atoms = st.one_of(
    st.integers(0, 10_000).map(str),
    st.sampled_from(["2.5", "0.05", "30d", "24h", "90m", "now", "true", "false", "null",
                     "profile.spend", "context.device", '"gold"', '"say \\"hi\\""',
                     "count(visit, within=7d)", "sum(purchase.value)", "last(purchase)",
                     "days_since(profile.joined)"]),
    names,
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["and", "or", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/"])
    return st.one_of(
        st.tuples(children, ops, children).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        children.map(lambda c: f"not ({c})"),
        children.map(lambda c: f"-({c})"),
        children.map(lambda c: f"({c}) is not null"),
        children.map(lambda c: f'({c}) in ["x", "y"]'),
    )


expressions = st.recursive(atoms, _combine, max_leaves=12)
space = st.sampled_from([" ", "  ", "\n", " \n  "])
comment = st.sampled_from(["", "# note", "# two  spaces", '# "quoted" {brace}'])


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    parts = []
    for i in range(draw(st.integers(1, 5))):
        lead = draw(comment)
        if lead:
            parts.append(lead)
        if draw(st.booleans()):
            parts.append(f"segment s{i} ={draw(space)}{draw(expressions)}")
        else:
            fields = [f"placements: home{draw(space)}"]
            if draw(st.booleans()):
                fields.append(f"when:{draw(space)}{draw(expressions)}")
            fields.append(f"value: {draw(expressions)}")
            if draw(st.booleans()):
                fields.append(f"cap: {draw(st.integers(1, 9))} per 7d")
            content = []
            if draw(st.booleans()):
                content.append('h: "Hi {{ profile.name | default(\\"you\\") }}"')
            if draw(st.booleans()):
                embedded = draw(expressions).replace("\\", "\\\\").replace('"', '\\"')
                content.append('t: "{% if ' + embedded
                               + ' %}a{% else %}b{% end %}{% for i in profile.tags %}'
                               '{{ i }}{% end %}"')
            if content:
                fields.append("content { " + draw(space).join(content) + " }")
            trailing = draw(comment)
            fields[-1] += f" {trailing}\n" if trailing else ""
            inner = draw(comment)
            if inner:
                fields.insert(1, f"\n{inner}\n")
            parts.append(f"action a{i} {{{draw(space)}" + draw(space).join(fields) + "\n}")
    return "\n".join(parts) + "\n"


@settings(max_examples=150, deadline=None)
@given(rule_files())
def test_generated_files_format_well(text: str) -> None:
    assert_formats_well(text)


def test_bandit_options_round_trip() -> None:
    out = assert_formats_well(
        "experiment e on home{arms:a,b allocate:thompson(prior=normal_gamma(10,1,2,50)) "
        "reward:conversion.value half_life:7d window:30d winner:b traffic:50%}\n")
    assert out.splitlines() == [
        "experiment e on home {",
        "  arms: a, b",
        "  allocate: thompson(prior = normal_gamma(10, 1, 2, 50))",
        "  traffic: 50%",
        "  reward: conversion.value",
        "  window: 30d",
        "  half_life: 7d",
        "  winner: b",
        "}",
    ]
