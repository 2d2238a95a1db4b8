"""One checked expression → one Python expression (source text), constants kept apart.

Shared by the compiler (every rule) and the linter (constant folding), so what
``arbiter check`` evaluates is exactly what serving runs. Names from rule files
never reach the source except as ``repr()`` string constants.
"""

from __future__ import annotations

from typing import Any

from dsl import ast
from dsl.checker import CheckedRuleset, Type, population_key
from dsl.vocabulary import CLUSTERS_ATTRIBUTE, POPULATION_ATTRIBUTE, SEND_TIME_ATTRIBUTE

_EVENT_FUNCS = {"count": "_count", "sum": "_sum", "last": "_last", "first": "_first"}


def node_name(node: ast.Ref) -> str:
    """``cluster.NAME`` or ``score.NAME``: what the decision's learnt values are keyed by."""
    return ".".join(node.parts)


class Emitter:
    """Translates one expression tree to Python source, collecting constants."""

    def __init__(self, checked: CheckedRuleset, constants: dict[str, Any]) -> None:
        self.checked = checked
        self.constants = constants
        self._temp = 0

    def temp(self) -> str:
        self._temp += 1
        return f"_t{self._temp}"

    def const(self, value: Any) -> str:
        name = f"K{len(self.constants)}"
        self.constants[name] = value
        return name

    def nullable(self, node: ast.Expr) -> bool:
        t: Type | None = self.checked.types.get(id(node))
        return t is None or t.nullable

    def emit(self, node: ast.Expr) -> str:
        if isinstance(node, ast.Literal):
            return repr(node.value)
        if isinstance(node, ast.Now):
            return "now"
        if isinstance(node, ast.Ref):
            head, *rest = node.parts
            if id(node) in self.checked.item_refs:  # item.NAME: a catalogue item's
                return f"X[{head!r}].get({rest[0]!r})"
            if not rest:
                if id(node) in self.checked.loop_refs:
                    return f"X[{head!r}]"  # a template loop variable
                return f"S[{head!r}]"
            if head in ("cluster", "score"):  # learnt (engine.learning.clusters, .scores)
                return f"_cluster(A.get({CLUSTERS_ATTRIBUTE!r}), {node_name(node)!r})"
            if head == "thresholds":  # a constant of this revision
                return repr(self.checked.thresholds[rest[0]].default)
            table = {"profile": "A", "context": "C", "action": "X"}[head]
            return f"{table}[{rest[0]!r}]"
        if isinstance(node, ast.Index):
            target = self.emit(node.target)
            if not self.nullable(node.target):
                return f"{target}.get({node.key!r})"
            t = self.temp()
            return f"(None if ({t} := {target}) is None else {t}.get({node.key!r}))"
        if isinstance(node, ast.ListExpr):
            return self.const(frozenset(i.value for i in node.items if isinstance(i, ast.Literal)))
        if isinstance(node, ast.Unary):
            inner = self.emit(node.operand)
            if node.op == "is null":
                return f"({inner} is None)"
            if node.op == "is not null":
                return f"({inner} is not None)"
            if not self.nullable(node.operand):
                return f"(not {inner})" if node.op == "not" else f"(-{inner})"
            t = self.temp()
            negate = "not " if node.op == "not" else "-"
            return f"(None if ({t} := {inner}) is None else {negate}{t})"
        if isinstance(node, ast.BoolOp):
            return self._boolop(node)
        if isinstance(node, ast.Binary):
            return self._binary(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise TypeError(f"cannot compile {node!r}")  # pragma: no cover

    def _boolop(self, node: ast.BoolOp) -> str:
        parts = [self.emit(o) for o in node.operands]
        if not any(self.nullable(o) for o in node.operands):
            return "(" + f" {node.op} ".join(parts) + ")"
        # Kleene logic with short-circuit: 'and' stops at the first False,
        # 'or' at the first True; otherwise None if any operand was None. Flat, however
        # many operands (Python's parser nests 200 parentheses at most: a segment of 200
        # 'or's crashed the compiler when each operand nested the rest).
        stop, other = ("False", "True") if node.op == "and" else ("True", "False")
        temps = [self.temp() for _ in parts]
        stops = " or ".join(f"({t} := {part}) is {stop}"
                            for t, part in zip(temps, parts, strict=True))
        unknown = " or ".join(f"{t} is None" for t in temps)
        return f"({stop} if ({stops}) else None if ({unknown}) else {other})"

    def _binary(self, node: ast.Binary) -> str:
        left, right = self.emit(node.left), self.emit(node.right)
        op = node.op
        if op == "/":
            return f"_div({left}, {right})"  # division by zero is null too
        # null in, null out: inline, without a helper call (names bind left to right)
        tests = []
        if self.nullable(node.left):
            tmp = self.temp()
            tests.append(f"({tmp} := {left}) is None")
            left = tmp
        if self.nullable(node.right):
            tmp = self.temp()
            tests.append(f"({tmp} := {right}) is None")
            right = tmp
        expr = f"({left} {op} {right})"
        return f"(None if {' or '.join(tests)} else {expr})" if tests else expr

    def _call(self, node: ast.Call) -> str:
        if node.name in _EVENT_FUNCS:
            ref = node.args[0]
            assert isinstance(ref, ast.Ref)
            event = f"E.get({ref.parts[0]!r})"
            if node.name in ("last", "first"):
                return f"{_EVENT_FUNCS[node.name]}({event})"
            within = dict(node.kwargs).get("within")
            window = repr(within.value) if isinstance(within, ast.Literal) else "None"
            return f"{_EVENT_FUNCS[node.name]}({event}, now, {window})"
        if node.name == "percentile":  # the population's, kept by the engine
            key = population_key(node.args[0])
            percent = node.args[1]
            assert key is not None and isinstance(percent, ast.Literal)
            return (f"_pct(A.get({POPULATION_ATTRIBUTE!r}), {key!r}, "
                    f"{float(percent.value)!r})")  # type: ignore[arg-type]
        args = [self.emit(a) for a in node.args]
        if node.name in ("days_since", "hours_since"):
            args.insert(0, "now")
        if node.name in ("hour_of_day", "day_of_week"):  # in the customer's time zone
            args.append("A.get('timezone')")
        if node.name == "best_send_hour":
            args = [f"A.get({SEND_TIME_ATTRIBUTE!r})", "now"]
        return f"{node.name}({', '.join(args)})"
