"""``thresholds.toml``: values computed outside Arbiter that rules compare against.

A ruleset declares its thresholds with defaults::

    thresholds { spend_p90: number = 500 }
    segment big_spender = sum(purchase.value) > thresholds.spend_p90

and an optional ``thresholds.toml`` at the ruleset's root overrides them, e.g. a
nightly job writing the 90th percentile of customer spend::

    spend_p90 = 812.5

The file is part of the ruleset: it changes the revision, a running server reloads
it, and its values are compiled into the rules as constants.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import replace
from pathlib import Path

from dsl.ast import Pos
from dsl.checker import CheckedRuleset
from dsl.diagnostics import Diagnostic

FILE_NAME = "thresholds.toml"
_TYPES = {"number": (int, float), "string": (str,), "bool": (bool,)}


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1


def _finite(value: object) -> bool:
    """A TOML number that a float holds (an integer of 400 digits does not)."""
    if not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _value_column(text: str, line: int) -> int:
    """The column where the value of ``key = value`` on ``line`` starts."""
    source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    equals = source.find("=")
    if equals < 0:
        return 1
    rest = source[equals + 1:]
    return equals + 2 + (len(rest) - len(rest.lstrip()))


def apply_overrides(checked: CheckedRuleset, path: str, text: str) -> list[Diagnostic]:
    """Replace declared threshold defaults with the file's values; errors are positioned."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"at line (\d+), column (\d+)", str(err))
        line, column = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        return [Diagnostic("error", f"invalid TOML: {err}", Pos(path, line, column))]
    diagnostics = []
    for key, value in values.items():
        pos = Pos(path, _line_of(text, key), 1)
        spec = checked.thresholds.get(key)
        if spec is None:
            diagnostics.append(Diagnostic(
                "error", f"'{key}' is not a declared threshold (declare it in a thresholds "
                         "block)", pos))
            continue
        kinds = _TYPES.get(spec.type, ())
        if not isinstance(value, kinds) or (spec.type == "number" and isinstance(value, bool)):
            diagnostics.append(Diagnostic(
                "error", f"threshold '{key}' is a {spec.type}, not {_toml_kind(value)}: "
                         f"{key} = {_example(spec.type)}",
                Pos(path, pos.line, _value_column(text, pos.line))))
            continue
        if spec.type == "number" and not _finite(value):
            diagnostics.append(Diagnostic(
                "error", f"threshold '{key}' must be a finite number, not {value}",
                Pos(path, pos.line, _value_column(text, pos.line))))
            continue
        checked.thresholds[key] = replace(
            spec, default=float(value) if spec.type == "number" else value)
    return diagnostics


def is_thresholds_file(path: str) -> bool:
    return Path(path).name == FILE_NAME


def _toml_kind(value: object) -> str:
    """What a TOML value is, in the words of the rule language's types.

    >>> _toml_kind("lots"), _toml_kind(True), _toml_kind(3), _toml_kind([1])
    ('a string', 'a bool', 'a number', 'an array')
    """
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _example(kind: str) -> str:
    """How a value of the type is written in TOML."""
    return {"number": "500", "string": '"gold"', "bool": "true"}.get(kind, "...")
