"""The item catalogue file next to the rules: ``items.jsonl`` (or ``items.csv``), checked
against the ``items { ... }`` block.

One item per line, an object with an ``id`` and declared attributes; a missing attribute
takes its default (or is null). Every problem is a positioned error (file:line:col), so a
bad catalogue stops a reload like a bad rule and the previous ruleset keeps serving.
The same check (:func:`check_item`) validates items upserted over gRPC.

>>> from dsl.schema import FieldSpec
>>> schema = {"price": FieldSpec("price", "number", False, None, None)}
>>> check_item(schema, {"id": "sku1", "price": 9.5})
({'id': 'sku1', 'price': 9.5}, [])
>>> check_item(schema, {"id": "sku1", "price": "cheap", "colour": "red"})[1]
[('price', 'must be a number, not a string'), ('colour', 'is not declared in the items block')]
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any

from dsl.ast import Pos
from dsl.diagnostics import Diagnostic
from dsl.schema import FieldSpec

FILE_NAMES = ("items.jsonl", "items.csv")
MAX_ID_LENGTH = 256
MAX_STRING = 4096
MAX_LIST = 64
_KIND = {bool: "bool", str: "string", list: "list", dict: "map"}


def is_catalogue_file(path: str) -> bool:
    return path.replace("\\", "/").rsplit("/", 1)[-1] in FILE_NAMES


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return _KIND.get(type(value), type(value).__name__)


def _value(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """(the value as stored, None) or (None, what is wrong)."""
    kind = _kind(value)
    expected = "number" if spec.type == "timestamp" else spec.type
    if kind != expected:
        return None, f"must be a {expected}, not a {kind}"
    if kind == "number" and not math.isfinite(value):
        return None, "must be a finite number"
    if kind == "string" and len(value) > MAX_STRING:
        return None, f"is longer than {MAX_STRING} characters"
    if kind == "list":
        if len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
            return None, f"must be a list of at most {MAX_LIST} strings"
        return list(value), None
    if kind == "map":
        if not all(isinstance(v, str) for v in value.values()):
            return None, "must map names to strings"
        return dict(value), None
    return (float(value) if kind == "number" else value), None


def check_item(schema: Mapping[str, FieldSpec], raw: Mapping[str, Any]
               ) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """The item with defaults filled in, or None; and (field, problem) for each problem."""
    problems: list[tuple[str, str]] = []
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not item_id or len(item_id) > MAX_ID_LENGTH:
        problems.append(("id", f"must be a non-empty string of at most {MAX_ID_LENGTH} "
                               "characters"))
    item: dict[str, Any] = {"id": item_id}
    for name, declared in schema.items():
        if declared.default is not None:
            item[name] = declared.default
    for name, value in raw.items():
        if name == "id":
            continue
        spec = schema.get(name)
        if spec is None:
            problems.append((name, "is not declared in the items block"))
            continue
        if value is None:
            continue
        checked, problem = _value(spec, value)
        if problem is not None:
            problems.append((name, problem))
        else:
            item[name] = checked
    return (None if problems else item), problems


def _column(line: str, name: str) -> int:
    """Where ``"name"`` is written on a JSON line (1 when it cannot be found)."""
    at = line.find(json.dumps(name))
    return at + 1 if at >= 0 else 1


def load_catalogue(path: str, text: str, schema: Mapping[str, FieldSpec] | None
                   ) -> tuple[tuple[dict[str, Any], ...], list[Diagnostic]]:
    """Every item of a catalogue file, or positioned errors; ``schema`` None: the rules
    declare no items block (an error: the file would be read by nothing)."""
    if schema is None:
        return (), [Diagnostic("error", "a catalogue file needs an 'items { ... }' block in "
                                        "the rules declaring its attributes", Pos(path, 1, 1))]
    rows = csv_rows(path, text, schema) if path.endswith(".csv") else json_rows(path, text)
    items: dict[str, dict[str, Any]] = {}
    diagnostics: list[Diagnostic] = []
    for line_no, raw, line, problem in rows:
        if problem is not None:
            diagnostics.append(Diagnostic("error", problem, Pos(path, line_no, 1)))
            continue
        item, problems = check_item(schema, raw)
        for name, message in problems:
            column = _column(line, name) if not path.endswith(".csv") else 1
            diagnostics.append(Diagnostic("error", f"item attribute '{name}' {message}",
                                          Pos(path, line_no, column)))
        if item is None:
            continue
        if item["id"] in items:
            diagnostics.append(Diagnostic("error", f"item '{item['id']}' appears twice",
                                          Pos(path, line_no, _column(line, "id"))))
        items[item["id"]] = item
    return tuple(items.values()), diagnostics


Row = tuple[int, dict[str, Any], str, str | None]
"""(line number, the item as read, the line, a problem with the line itself)."""


def json_rows(path: str, text: str) -> list[Row]:
    rows: list[Row] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append((line_no, {}, line, f"not a JSON object: {err.msg} at column "
                                            f"{err.colno}"))
            continue
        if not isinstance(raw, dict):
            rows.append((line_no, {}, line, "each line is one item: a JSON object"))
            continue
        rows.append((line_no, raw, line, None))
    return rows


def csv_rows(path: str, text: str, schema: Mapping[str, FieldSpec]) -> list[Row]:
    """A header row of attribute names; numbers and bools parsed, lists split on ``|``."""
    reader = csv.DictReader(io.StringIO(text))
    rows: list[Row] = []
    for record in reader:
        raw: dict[str, Any] = {}
        problem = None
        for name, cell in record.items():
            if name is None or cell is None or cell == "":
                continue
            spec = schema.get(name)
            kind = spec.type if spec is not None else "string"
            try:
                raw[name] = _cell(kind, cell)
            except ValueError:
                problem = f"item attribute '{name}': {cell!r} is not a {kind}"
        rows.append((reader.line_num, raw, "", problem))
    return rows


def _cell(kind: str, cell: str) -> Any:
    if kind in ("number", "timestamp"):
        return float(cell)
    if kind == "bool":
        if cell.lower() not in ("true", "false"):
            raise ValueError(cell)
        return cell.lower() == "true"
    if kind == "list":
        return [part for part in cell.split("|") if part]
    return cell
