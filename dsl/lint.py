"""Cheap semantic warnings over a checked ruleset, and its evaluation cost bound.

* A condition without any attribute, event or time in it is constant: a ``when``
  that is always false makes its action unreachable; one always true is useless.
* ``and``-ed comparisons of one attribute with numbers whose ranges do not overlap
  (``profile.spend > 500 and profile.spend < 100``) can never hold.
* The cost bound: rules have no loops, recursion or user functions, so one decision
  evaluates each expression node at most once (segments are memoised). The bound
  is the node count over every segment, condition, value and rank formula;
  windowed ``count``/``sum`` add a binary search (and ``sum`` a scan) over at most
  :data:`engine.profiles.MAX_RECENT_EVENTS` events.
"""

from __future__ import annotations

import math

from dsl import ast
from dsl.ast import walk
from dsl.checker import CheckedRuleset
from dsl.diagnostics import Diagnostic
from dsl.emitter import Emitter
from dsl.printer import print_expr
from dsl.runtime import HELPERS


def _constant(expr: ast.Expr, checked: CheckedRuleset) -> tuple[bool, object]:
    """(True, value) when the expression reads nothing from the customer or the time."""
    if any(isinstance(n, ast.Ref | ast.Now | ast.Call) for n in walk(expr)):
        return False, None
    constants: dict[str, object] = {}
    source = Emitter(checked, constants).emit(expr)  # the code serving runs
    namespace = {"__builtins__": {}, **HELPERS, **constants}
    # generated from a checked, constant expression: no names from the rule file
    return True, eval(compile(source, "<constant>", "eval"), namespace)


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}


def _bounds(node: ast.Expr) -> tuple[str, str, float] | None:
    """``profile.x > 5`` (or ``5 < profile.x``) as (attribute, op, number)."""
    if not isinstance(node, ast.Binary) or node.op not in _FLIP:
        return None
    left, right, op = node.left, node.right, node.op
    if isinstance(left, ast.Literal) and isinstance(right, ast.Ref):
        left, right, op = right, left, _FLIP[op]
    if (isinstance(left, ast.Ref) and isinstance(right, ast.Literal)
            and right.kind in ("number", "duration") and len(left.parts) == 2):
        return ".".join(left.parts), op, float(right.value)  # type: ignore[arg-type]
    return None


def _contradiction(expr: ast.Expr) -> str | None:
    """The attribute whose ``and``-ed numeric ranges are empty, if any."""
    if not (isinstance(expr, ast.BoolOp) and expr.op == "and"):
        return None
    ranges: dict[str, tuple[float, bool, float, bool]] = {}  # lo, lo_open, hi, hi_open
    for operand in expr.operands:
        bound = _bounds(operand)
        if bound is None:
            continue
        name, op, value = bound
        lo, lo_open, hi, hi_open = ranges.get(name, (-math.inf, False, math.inf, False))
        if op in (">", ">=", "==") and (value > lo or (value == lo and op == ">")):
            lo, lo_open = value, op == ">"
        if op in ("<", "<=", "==") and (value < hi or (value == hi and op == "<")):
            hi, hi_open = value, op == "<"
        ranges[name] = (lo, lo_open, hi, hi_open)
        if lo > hi or (lo == hi and (lo_open or hi_open)):
            return name
    return None


def lint(checked: CheckedRuleset) -> tuple[list[Diagnostic], int]:
    """Warnings, and the cost bound in expression nodes per decision."""
    warnings: list[Diagnostic] = []
    conditions: list[tuple[str, ast.Expr, str]] = []
    cost = 0
    for segment in checked.segments.values():
        conditions.append((f"segment '{segment.name}'", segment.condition, "segment"))
    for action in checked.actions.values():
        if action.when is not None:
            conditions.append((f"'when' of action '{action.name}'", action.when, "when"))
        if action.unless is not None:
            conditions.append((f"'unless' of action '{action.name}'", action.unless, "unless"))
        if action.value is not None:
            cost += sum(1 for _ in walk(action.value))
    for placement in checked.placements.values():
        if placement.rank is not None:
            cost += sum(1 for _ in walk(placement.rank))
    for what, expr, kind in conditions:
        cost += sum(1 for _ in walk(expr))
        is_constant, value = _constant(expr, checked)
        if is_constant:
            always = "true" if value is True else "false" if value is False else "null"
            hidden = (kind == "when" and value is not True) or (
                kind == "unless" and value is not False)
            effect = ": the action can never be shown" if hidden else ""
            warnings.append(Diagnostic("warning", f"{what} is always {always}{effect}",
                                       expr.pos))
            continue
        name = _contradiction(expr)
        if name is not None:
            tail = ": the action can never be shown" if kind == "when" else ""
            warnings.append(Diagnostic(
                "warning", f"{what} can never hold: the ranges of {name} in "
                           f"'{print_expr(expr)}' do not overlap{tail}", expr.pos))
    return warnings, cost
