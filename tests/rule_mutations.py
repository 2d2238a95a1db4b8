"""Hypothesis strategies that mutate a ruleset's files the way edits, merges and bad
tooling do: bytes, tokens, whole lines, splices between files, and threshold values.
Used by the rules fuzz test and ``make fuzz``."""

from __future__ import annotations

from hypothesis import strategies as st

TOKENS = ["segment", "action", "placement", "experiment", "policy", "model", "thresholds",
          "profile", "context", "events", "when", "and", "or", "not", "in", "{", "}", "(",
          ")", ",", ":", "=", "==", "!=", ">=", "<", "+", "-", "*", "/", "%", "\"", "'",
          "{{", "}}", "{%", "%}", "48h", "0ms", "30d", "1", "0", "-1", "0.5", "9" * 400,
          "1" * 320 + ".5", "100%", "250%", "count(visit)", "last(purchase)",
          "sum(purchase.value)", "now", "profile.tier", "context.cart_value",
          "thresholds.vip_spend", "cap: 0 per 1d", "slots: 0", "weight: -5", "prior: 2",
          "bagging: 0", "bagging: 1000", "holdout: 100%", "\\", "\x00", "é", "\t", "\n",
          "import \"x.arb\"", "import \"segments.arb\"", "#", "true", "false", "null",
          "percentile(sum(purchase.value), 80)", "percentile(count(visit), 101)",
          "percentile(", "best_send_hour()", "hour_of_day(now)", "day_of_week(last(visit))",
          "items: recommend(3)", "recommend(0)", "recommend(99, where: item.price < 1)",
          "where: item.nope", "exclude: purchase within 0d", "exclude: nope", "recommended",
          "{% for item in recommended %}{{ item.name }}{% end %}", "item.price", "items {",
          "cluster c { features: x = count(visit)  k: 2 }", "cluster.shoppers", "k: 0",
          "names: a", "score.churn", "score s { label: no visit within 1d  features: x = 1 }",
          "label: no purchase within 400d", "target: sum(visit.value) within 1d"]
THRESHOLD_VALUES = ["nan", "inf", "-inf", "1e400", "-1e308", "1e308", "0", "-0.0", "\"x\"",
                    "true", "[1]", "{a=1}", "", "9" * 400]


@st.composite
def mutated(draw: st.DrawFn, sources: dict[str, str]) -> dict[str, str]:
    """``sources`` (relative name -> text) after one to three random edits."""
    files = dict(sources)
    names = sorted(files)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        text = files[name]
        op = draw(st.sampled_from(["delete", "insert_token", "insert_bytes", "replace_char",
                                   "drop_line", "dup_line", "swap_lines", "splice",
                                   "threshold", "truncate"]))
        lines = text.splitlines(keepends=True) or [""]
        if op == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            j = draw(st.integers(i, min(len(text), i + 40)))
            text = text[:i] + text[j:]
        elif op == "insert_token":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(TOKENS)) + " " + text[i:]
        elif op == "insert_bytes":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(max_size=8)) + text[i:]
        elif op == "replace_char" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + draw(st.characters()) + text[i + 1:]
        elif op == "drop_line":
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "".join(lines)
        elif op == "dup_line":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif op == "swap_lines" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif op == "splice":  # a line from another file
            other = files[draw(st.sampled_from(names))].splitlines(keepends=True) or [""]
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(other)))
            text = "".join(lines)
        elif op == "threshold" and "thresholds.toml" in files:
            name = "thresholds.toml"
            value = draw(st.sampled_from(THRESHOLD_VALUES))
            key = draw(st.sampled_from(["vip_spend", "vip_spend", "other"]))
            text = f"{key} = {value}\n"
        elif op == "truncate" and text:
            text = text[: draw(st.integers(0, len(text) - 1))]
        files[name] = text
    return files
