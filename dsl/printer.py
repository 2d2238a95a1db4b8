"""AST → canonical rule text (used by explanations; the seed of ``arbiter fmt``).

>>> from dsl.parser import parse_text
>>> module, _ = parse_text("segment s = not(a)and profile.x>=30d", "a.arb")
>>> print_expr(module.items[0].condition)
'not a and profile.x >= 30d'
"""

from __future__ import annotations

from dsl import ast

# binding strength: higher binds tighter
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7}
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def _duration(seconds: float) -> str:
    for unit, size in _UNITS:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{int(seconds * 1000)}ms" if (seconds * 1000).is_integer() else f"{seconds:g}s"


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _literal(node: ast.Literal) -> str:
    if node.text and node.kind in ("duration", "number"):
        return node.text
    if node.kind == "duration":
        return _duration(float(node.value))  # type: ignore[arg-type]
    if node.kind == "string":
        text = str(node.value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{text}"'
    if node.kind == "bool":
        return "true" if node.value else "false"
    if node.kind == "null":
        return "null"
    value = float(node.value)  # type: ignore[arg-type]
    return str(int(value)) if value.is_integer() else repr(value)


def _level(node: ast.Expr) -> int:
    if isinstance(node, ast.BoolOp):
        return _PRECEDENCE[node.op]
    if isinstance(node, ast.Unary):
        return _PRECEDENCE["not"] if node.op == "not" else (
            _PRECEDENCE["neg"] if node.op == "-" else _PRECEDENCE["cmp"])
    if isinstance(node, ast.Binary):
        return _PRECEDENCE.get(node.op, _PRECEDENCE["cmp"])
    return 10


def _wrap(node: ast.Expr, minimum: int) -> str:
    text = print_expr(node)
    return f"({text})" if _level(node) < minimum else text


def print_expr(node: ast.Expr) -> str:
    """Canonical text of an expression, with only the parentheses it needs."""
    if isinstance(node, ast.Literal):
        return _literal(node)
    if isinstance(node, ast.Now):
        return "now"
    if isinstance(node, ast.Ref):
        return ".".join(node.parts)
    if isinstance(node, ast.Index):
        return f'{".".join(node.target.parts)}["{_escape_key(node.key)}"]'
    if isinstance(node, ast.ListExpr):
        return "[" + ", ".join(print_expr(i) for i in node.items) + "]"
    if isinstance(node, ast.Call):
        args = [print_expr(a) for a in node.args]
        args += [f"{k}={print_expr(v)}" for k, v in node.kwargs]
        return f"{node.name}({', '.join(args)})"
    if isinstance(node, ast.BoolOp):
        level = _PRECEDENCE[node.op]
        return f" {node.op} ".join(_wrap(o, level + 1) for o in node.operands)
    if isinstance(node, ast.Unary):
        if node.op == "not":
            return f"not {_wrap(node.operand, _PRECEDENCE['not'])}"
        if node.op == "-":
            return f"-{_wrap(node.operand, _PRECEDENCE['neg'])}"
        return f"{_wrap(node.operand, _PRECEDENCE['+'])} {node.op}"
    if isinstance(node, ast.Binary):
        level = _level(node)
        if level == _PRECEDENCE["cmp"]:
            return f"{_wrap(node.left, level + 1)} {node.op} {_wrap(node.right, level + 1)}"
        # left-associative arithmetic: the right side needs parentheses at equal level
        return f"{_wrap(node.left, level)} {node.op} {_wrap(node.right, level + 1)}"
    raise TypeError(f"cannot print {node!r}")  # pragma: no cover
