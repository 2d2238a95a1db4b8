"""Stored attributes as rules see them: only those of the declared type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsl.schema import FieldSpec

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "number": (float, int),
    "string": (str,),
    "bool": (bool,),
    "timestamp": (float, int),
    "list": (list,),
    "map": (dict,),
}


def typed_attributes(schema: Mapping[str, FieldSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """Stored attributes whose type matches the schema; others read as missing."""
    out = {}
    for name, value in values.items():
        spec = schema.get(name)
        if spec is None:
            continue
        kinds = _PY_TYPES[spec.type]
        if isinstance(value, kinds) and not (spec.type != "bool" and isinstance(value, bool)):
            out[name] = value
    return out
