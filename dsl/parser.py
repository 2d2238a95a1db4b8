"""Text → AST: the Lark grammar in ``grammar.lark`` and one transformer to typed nodes.

>>> module, diags = parse_text("segment big = profile.total_spend > 500", "a.arb")
>>> module.items[0].name, diags
('big', [])
>>> parse_text("segment = 1", "a.arb")[1][0].pos.column
9
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from dsl import ast
from dsl.diagnostics import Diagnostic
from dsl.printer import print_expr
from dsl.units import duration_seconds

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")
TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)
MAX_SYNTAX_DEPTH = 80
"""Levels of a file's syntax tree at most (a rule's declaration takes about eight; then
one per ``not`` or sign, two per parenthesis, three per operator or call around a
parenthesised operand): deeper is an error at the first node past it, so that checking
and compiling the rule stay well inside Python's own limits (its recursion, and the 200
parentheses its parser nests) instead of crashing."""
MAX_TEMPLATE_NESTING = 32
"""``{% if %}`` and ``{% for %}`` blocks open at once in one content template, at most."""


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        GRAMMAR_PATH.read_text(),
        parser="lalr",
        start=["start", "template_token", "expr"],
        propagate_positions=True,
        maybe_placeholders=False,
    )


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _ToAst(Transformer[Token, Any]):
    """Builds :mod:`dsl.ast` nodes; ``file`` names the source for positions."""

    def __init__(self, file: str, line_offset: int = 0, column_offset: int = 0) -> None:
        super().__init__()
        self.file = file
        self.line_offset = line_offset
        self.column_offset = column_offset
        self.diagnostics: list[Diagnostic] = []

    def _pos(self, meta_or_token: Any) -> ast.Pos:
        line = getattr(meta_or_token, "line", 1) or 1
        column = getattr(meta_or_token, "column", 1) or 1
        if line == 1:
            column += self.column_offset
        return ast.Pos(self.file, line + self.line_offset, column)

    # -- literals
    def _finite(self, value: float, token: Token) -> float:
        """``value`` when finite; else a positioned error (a literal too large for a float
        would compile to inf and fail at run time) and 0."""
        if math.isfinite(value):
            return value
        text = str(token)
        shown = text if len(text) <= 24 else f"{text[:12]}...{text[-6:]}"
        self.diagnostics.append(Diagnostic(
            "error", f"number {shown} is too large (at most about 1.8e308)", self._pos(token)))
        return 0.0

    @v_args(meta=True)
    def number(self, meta: Any, children: list[Token]) -> ast.Literal:
        return ast.Literal(self._finite(float(children[0]), children[0]), "number",
                           self._pos(children[0]), str(children[0]))

    def signed_number(self, children: list[Token]) -> float:
        return self._finite(float(children[0]), children[0])

    @v_args(meta=True)
    def duration(self, meta: Any, children: list[Token]) -> ast.Literal:
        return self._duration_literal(children[0])

    @v_args(meta=True)
    def string(self, meta: Any, children: list[Token]) -> ast.Literal:
        return ast.Literal(_unescape(children[0]), "string", self._pos(children[0]))

    @v_args(meta=True)
    def true(self, meta: Any, children: list[Any]) -> ast.Literal:
        return ast.Literal(True, "bool", self._pos(meta))

    @v_args(meta=True)
    def false(self, meta: Any, children: list[Any]) -> ast.Literal:
        return ast.Literal(False, "bool", self._pos(meta))

    @v_args(meta=True)
    def null(self, meta: Any, children: list[Any]) -> ast.Literal:
        return ast.Literal(None, "null", self._pos(meta))

    # -- expressions
    @v_args(meta=True)
    def now(self, meta: Any, children: list[Any]) -> ast.Now:
        return ast.Now(self._pos(meta))

    @v_args(meta=True)
    def ref(self, meta: Any, children: list[Token]) -> ast.Ref:
        return ast.Ref(tuple(str(c) for c in children), self._pos(meta))

    @v_args(meta=True)
    def index(self, meta: Any, children: list[Any]) -> ast.Index:
        return ast.Index(children[0], _unescape(children[1]), self._pos(meta))

    @v_args(meta=True)
    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        name, *arguments = children
        args = tuple(a for a in arguments if not isinstance(a, tuple))
        kwargs = tuple(a for a in arguments if isinstance(a, tuple))
        return ast.Call(str(name), args, kwargs, self._pos(meta))

    def keyword(self, children: list[Any]) -> tuple[str, ast.Expr]:
        return (str(children[0]), children[1])

    @v_args(meta=True)
    def list_expr(self, meta: Any, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(children), self._pos(meta))

    @v_args(meta=True)
    def or_(self, meta: Any, children: list[Any]) -> ast.Expr:
        if len(children) == 1:
            return children[0]
        return ast.BoolOp("or", tuple(children), self._pos(meta))

    @v_args(meta=True)
    def and_(self, meta: Any, children: list[Any]) -> ast.Expr:
        if len(children) == 1:
            return children[0]
        return ast.BoolOp("and", tuple(children), self._pos(meta))

    @v_args(meta=True)
    def not_(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Unary("not", children[0], self._pos(meta))

    @v_args(meta=True)
    def neg(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Unary("-", children[0], self._pos(meta))

    @v_args(meta=True)
    def is_null(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Unary("is null", children[0], self._pos(meta))

    @v_args(meta=True)
    def is_not_null(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Unary("is not null", children[0], self._pos(meta))

    @v_args(meta=True)
    def compare(self, meta: Any, children: list[Any]) -> ast.Expr:
        left, op, right = children
        return ast.Binary(str(op), left, right, self._pos(op))

    binop = compare

    @v_args(meta=True)
    def in_(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Binary("in", children[0], children[1], self._pos(meta))

    @v_args(meta=True)
    def not_in(self, meta: Any, children: list[Any]) -> ast.Expr:
        return ast.Binary("not in", children[0], children[1], self._pos(meta))

    # -- template tokens
    @v_args(meta=True)
    def template_token(self, meta: Any, children: list[Any]) -> ast.TemplateToken:
        expr, *filters = children
        return ast.TemplateToken(expr, tuple(filters), self._pos(meta))

    def filter(self, children: list[Any]) -> tuple[str, tuple[ast.Literal, ...]]:
        name, *args = children
        return (str(name), tuple(args))

    # -- declarations
    def name(self, children: list[Token]) -> Token:
        return Token.new_borrow_pos("NAME", str(children[0]), children[0])

    def name_list(self, children: list[Token]) -> tuple[str, ...]:
        return tuple(str(c) for c in children)

    def default(self, children: list[Any]) -> ast.Literal:
        return children[0]

    @v_args(meta=True)
    def field_decl(self, meta: Any, children: list[Any]) -> ast.FieldDecl:
        name, type_, *rest = children
        pii = any(isinstance(c, Token) and c.type == "PII" for c in rest)
        default = next((c for c in rest if isinstance(c, ast.Literal)), None)
        return ast.FieldDecl(str(name), str(type_), pii, default, self._pos(name))

    @v_args(meta=True)
    def profile_block(self, meta: Any, children: list[Any]) -> ast.SchemaBlock:
        return ast.SchemaBlock("profile", tuple(children), self._pos(meta))

    @v_args(meta=True)
    def context_block(self, meta: Any, children: list[Any]) -> ast.SchemaBlock:
        return ast.SchemaBlock("context", tuple(children), self._pos(meta))

    @v_args(meta=True)
    def items_block(self, meta: Any, children: list[Any]) -> ast.SchemaBlock:
        return ast.SchemaBlock("items", tuple(children), self._pos(meta))

    def reco_where(self, children: list[Any]) -> tuple[str, Any]:
        return ("where", children[0])

    @v_args(meta=True)
    def reco_exclude(self, meta: Any, children: list[Any]) -> tuple[str, Any]:
        window = self._duration_literal(children[1]) if len(children) > 1 else None
        return ("exclude", ast.Exclusion(str(children[0]), window, self._pos(children[0])))

    def _recommend(self, children: list[Any], pos: ast.Pos) -> ast.Recommend:
        count, *options = children
        wheres = [value for kind, value in options if kind == "where"]
        if len(wheres) > 1:
            self.diagnostics.append(Diagnostic(
                "error", "'where' is set twice in this recommend()", wheres[1].pos))
        return ast.Recommend(int(count), pos, wheres[0] if wheres else None,
                             tuple(value for kind, value in options if kind == "exclude"))

    @v_args(meta=True)
    def thresholds_block(self, meta: Any, children: list[Any]) -> ast.SchemaBlock:
        return ast.SchemaBlock("thresholds", tuple(children), self._pos(meta))

    @v_args(meta=True)
    def import_def(self, meta: Any, children: list[Any]) -> ast.ImportDef:
        return ast.ImportDef(_unescape(children[0]), self._pos(meta))

    @v_args(meta=True)
    def events_def(self, meta: Any, children: list[Any]) -> ast.EventsDef:
        return ast.EventsDef(children[0], self._pos(meta))

    @v_args(meta=True)
    def segment_def(self, meta: Any, children: list[Any]) -> ast.SegmentDef:
        return ast.SegmentDef(str(children[0]), children[1], self._pos(children[0]))

    @v_args(meta=True)
    def policy_rule(self, meta: Any, c: list[Any]) -> ast.PolicyRule:
        scope, name, limit, window = c
        return ast.PolicyRule(str(scope), str(name), int(limit), self._duration_literal(window),
                              self._pos(meta))

    @v_args(meta=True)
    def policy_def(self, meta: Any, c: list[Any]) -> ast.PolicyDef:
        return ast.PolicyDef(tuple(c), self._pos(meta))

    @v_args(meta=True)
    def content_field(self, meta: Any, c: list[Any]) -> ast.ContentField:
        name, *kind, raw = c
        pos = self._pos(raw)
        parts = _parse_template(_unescape(raw), pos, self.diagnostics)
        return ast.ContentField(str(name), parts, self._pos(name), html=bool(kind))

    @v_args(meta=True)
    def feature(self, meta: Any, c: list[Any]) -> tuple[str, ast.Pos]:
        return (".".join(str(x) for x in c), self._pos(meta))

    def beta_prior(self, c: list[Any]) -> tuple[str, tuple[float, ...]]:
        return ("beta", (c[0], c[1]))

    def normal_gamma_prior(self, c: list[Any]) -> tuple[str, tuple[float, ...]]:
        return ("normal_gamma", tuple(c))

    def _duration_literal(self, token: Token) -> ast.Literal:
        return ast.Literal(self._finite(duration_seconds(token), token), "duration",
                           self._pos(token), str(token))

    # ---- block fields: every field rule is read by its kind (dsl.ast.block_fields) ----
    def __default__(self, data: Any, children: list[Any], meta: Any) -> Any:
        row = FIELD_RULES.get(str(data))
        if row is None:
            return super().__default__(data, children, meta)
        pos = self._pos(meta)
        return (row.keyword, row.attr, _READERS[row.kind](self, str(data), children, pos), pos)

    def _fields(self, children: list[Any], block: str) -> tuple[dict[str, Any], dict[str, ast.Pos]]:
        """(attribute -> value, keyword -> position) of a block's fields; twice is an error."""
        values: dict[str, Any] = {}
        positions: dict[str, ast.Pos] = {}
        for keyword, attr, value, pos in children:
            if keyword in positions:
                self.diagnostics.append(
                    Diagnostic("error", f"'{keyword}' is set twice in this {block}", pos))
            values[attr] = value
            positions[keyword] = pos
        return values, positions

    @v_args(meta=True)
    def placement_def(self, meta: Any, children: list[Any]) -> ast.PlacementDef:
        name, *fields = children
        values, positions = self._fields(fields, "placement")
        return ast.PlacementDef(str(name), self._pos(name), **values, field_pos=positions)

    @v_args(meta=True)
    def action_def(self, meta: Any, children: list[Any]) -> ast.ActionDef:
        name, *fields = children
        values, positions = self._fields(fields, "action")
        return ast.ActionDef(str(name), self._pos(name), **values, field_pos=positions)

    @v_args(meta=True)
    def model_def(self, meta: Any, children: list[Any]) -> ast.ModelDef:
        placement, *fields = children
        values, positions = self._fields(fields, "model")
        return ast.ModelDef(str(placement), self._pos(meta), **values,
                            field_pos={**positions, "placement": self._pos(placement)})

    @v_args(meta=True)
    def cluster_def(self, meta: Any, children: list[Any]) -> ast.ClusterDef:
        name, *fields = children
        values, positions = self._fields(fields, "cluster")
        return ast.ClusterDef(str(name), self._pos(name), **values, field_pos=positions)

    @v_args(meta=True)
    def score_def(self, meta: Any, children: list[Any]) -> ast.ScoreDef:
        name, *fields = children
        values, positions = self._fields(fields, "score")
        return ast.ScoreDef(str(name), self._pos(name), **values, field_pos=positions)

    def _score_outcome(self, rule: str, c: list[Any], pos: ast.Pos) -> ast.ScoreOutcome:
        kind = {"score_label_none": "none", "score_label_any": "any"}.get(rule, "sum")
        return ast.ScoreOutcome(kind, str(c[0]), self._duration_literal(c[-1]), pos)

    @v_args(meta=True)
    def cluster_feature(self, meta: Any, children: list[Any]) -> ast.ClusterFeature:
        return ast.ClusterFeature(str(children[0]), children[1], self._pos(children[0]))

    @v_args(meta=True)
    def unnamed_feature(self, meta: Any, children: list[Any]) -> ast.ClusterFeature:
        """A feature written as its expression only: named by the expression as printed."""
        return ast.ClusterFeature(print_expr(children[0]), children[0], self._pos(meta),
                                  named=False)

    @v_args(meta=True)
    def experiment_def(self, meta: Any, children: list[Any]) -> ast.ExperimentDef:
        name, placement, *fields = children
        values, positions = self._fields(fields, "experiment")
        reward, reward_value = values.pop("reward", ("click", False))
        if values.get("prior") is None:  # the default prior follows the kind of reward
            values["prior"] = (("normal_gamma", (0.0, 1.0, 1.0, 1.0)) if reward_value
                               else ("beta", (1.0, 1.0)))
        return ast.ExperimentDef(str(name), str(placement), self._pos(name), **values,
                                 reward=reward, reward_value=reward_value,
                                 field_pos={**positions, "placement": self._pos(placement)})


Reader = Callable[[_ToAst, str, list[Any], ast.Pos], Any]
"""(transformer, grammar rule, children, position) -> the field's value."""

_READERS: dict[str, Reader] = {
    "names": lambda tr, rule, c, pos: c[0],
    "name": lambda tr, rule, c, pos: str(c[0]),
    "date": lambda tr, rule, c, pos: str(c[0]),
    "expr": lambda tr, rule, c, pos: c[0],
    "number": lambda tr, rule, c, pos: c[0],
    "int": lambda tr, rule, c, pos: int(c[0]),
    "string": lambda tr, rule, c, pos: _unescape(c[0]),
    "percent": lambda tr, rule, c, pos: tr._finite(float(str(c[0])[:-1]), c[0]),
    "duration": lambda tr, rule, c, pos: tr._duration_literal(c[0]),
    "cap": lambda tr, rule, c, pos: ast.FrequencyCap(int(c[0]), tr._finite(
        duration_seconds(c[1]), c[1]), pos,
                                                     str(c[1])),
    "suppress": lambda tr, rule, c, pos: ast.Suppression(tr._duration_literal(c[0]), int(c[1]),
                                                         str(c[2]), pos),
    "content": lambda tr, rule, c, pos: tuple(c),
    "recommend": lambda tr, rule, c, pos: tr._recommend(c, pos),
    "cluster_features": lambda tr, rule, c, pos: tuple(c),
    "score_outcome": lambda tr, rule, c, pos: tr._score_outcome(rule, c, pos),
    "features": lambda tr, rule, c, pos: tuple(c),
    "weights": lambda tr, rule, c, pos: tuple(c),
    "thompson": lambda tr, rule, c, pos: c[0] if c else None,
    "reward": lambda tr, rule, c, pos: (str(c[0]), rule == "reward_value"),
}
"""How each kind of field value is read from its parse tree."""

BLOCKS = {"action": ast.ActionDef, "experiment": ast.ExperimentDef, "model": ast.ModelDef,
          "placement": ast.PlacementDef, "cluster": ast.ClusterDef, "score": ast.ScoreDef}
FIELD_RULES: dict[str, ast.BlockField] = {
    row.rule: row for node in BLOCKS.values() for row in ast.block_fields(node)}
FIELD_RULES["reward_value"] = FIELD_RULES["reward"]  # reward: conversion.value
FIELD_RULES["score_label_any"] = FIELD_RULES["score_label_none"]  # label: EVENT within D


def _describe(token: Token) -> str:
    if token.type == "$END":
        return "end of input"
    return f"'{token.value}'"


def _expected(names: set[str]) -> str:
    lark = _lark()
    shown = []
    soft_names = "NAME" in names  # keywords that are also accepted as a name: say "name"
    for name in sorted(names):
        if name.startswith("__") or name == "$END":
            continue
        try:
            pattern = lark.get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type == "str":
            if soft_names and re.fullmatch(r"[a-z_]+", pattern.value):
                continue
            shown.append(f"'{pattern.value}'")
        else:
            shown.append(name.lower().replace("_", " "))
    if not shown:
        return ""
    return "; expected " + (shown[0] if len(shown) == 1 else "one of " + ", ".join(shown[:14]))


def _end_of(text: str) -> tuple[int, int]:
    """Line and column just after the last non-blank character."""
    body = text.rstrip()
    lines = body.split("\n")
    return len(lines), len(lines[-1]) + 1


_BLOCK_START_RE = re.compile(r"#[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|[{}]")


def _enclosing_block(text: str, offset: int) -> str | None:
    """The first word of the innermost block open at ``offset`` (``action``, ``model``...)."""
    stack: list[str] = []
    for match in _BLOCK_START_RE.finditer(text, 0, offset):
        if match.group() == "{":
            head = text[:match.start()].rsplit("\n", 1)[-1].replace("}", " ").split()
            stack.append(head[0] if head else "")
        elif match.group() == "}" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _unknown_field(err: UnexpectedToken, text: str) -> str | None:
    """``colour: red`` in an action: name the block's fields (from the field table)."""
    token = err.token
    block = _enclosing_block(text, token.start_pos or 0) if token.start_pos is not None else None
    if block not in BLOCKS or not re.match(r"[A-Za-z_]\w*\s*:", text[token.start_pos:]):
        return None
    keywords = list(dict.fromkeys(row.keyword for row in ast.block_fields(BLOCKS[block])))
    if str(token) in keywords:  # a known field after a malformed one: the plain message
        return None
    close = difflib.get_close_matches(str(token), keywords, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (f"unknown {block} field '{token}'{hint} ({block} fields: "
            f"{', '.join(keywords)})")


def _syntax_diagnostic(err: UnexpectedInput, file: str, line_off: int, col_off: int,
                       text: str) -> Diagnostic:
    line = err.line if isinstance(err.line, int) and err.line > 0 else 1
    column = err.column if isinstance(err.column, int) and err.column > 0 else 1
    at_end = isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END")
    if at_end:
        line, column = _end_of(text)
    if line == 1:
        column += col_off
    pos = ast.Pos(file, line + line_off, column)
    unknown = _unknown_field(err, text) if isinstance(err, UnexpectedToken) else None
    if unknown is not None:
        message = unknown
    elif isinstance(err, UnexpectedToken) and err.token.value == "=":
        message = ("syntax error: unexpected '=': compare with '==' (profile.tier == \"gold\"), "
                   "and give a field its value with ':' (value: 10)")
    elif isinstance(err, UnexpectedToken):
        message = f"syntax error: unexpected {_describe(err.token)}{_expected(err.expected)}"
    elif isinstance(err, UnexpectedCharacters):
        message = f"syntax error: unexpected character {err.char!r}"
    elif isinstance(err, UnexpectedEOF):
        message = f"syntax error: unexpected end of input{_expected(set(err.expected))}"
    else:  # pragma: no cover - lark has no other subclasses today
        message = "syntax error"
    return Diagnostic("error", message, pos)


_BLOCK_RE = re.compile(
    r"\s*(?:(?P<if>if)\s+(?P<cond>.+?)|(?P<for>for)\s+(?P<var>[A-Za-z_]\w*)\s+in\s+(?P<items>.+?)"
    r"|(?P<else>else)|(?P<end>end))\s*", re.DOTALL)


@dataclass
class _Frame:
    """An open ``{% if %}`` or ``{% for %}`` while a template is parsed."""

    kind: str  # root | if | for
    pos: ast.Pos
    parts: list[ast.TemplatePart] = field(default_factory=list)
    then: list[ast.TemplatePart] | None = None  # an if's parts before {% else %}
    expr: ast.Expr | None = None
    var: str = ""


def _parse_fragment(source: str, start: str, file: str, line_off: int, col_off: int,
                    diagnostics: list[Diagnostic]) -> Any:
    """Parse part of a string literal (a token or a block's expression) at its position."""
    transformer = _ToAst(file, line_off, col_off)
    try:
        tree = _lark().parse(source, start=start)
    except UnexpectedInput as err:
        diagnostics.append(_syntax_diagnostic(err, file, line_off, col_off, source))
        return None
    if (deep := _too_deep(tree, file, line_off, col_off)) is not None:
        diagnostics.append(deep)
        return None
    node = transformer.transform(tree)
    diagnostics.extend(transformer.diagnostics)
    return node


class _TemplateParser:
    """A content string as literal text, ``{{ ... }}`` tokens, and if/for blocks."""

    def __init__(self, pos: ast.Pos, diagnostics: list[Diagnostic]) -> None:
        self.pos = pos
        self.diagnostics = diagnostics
        self.stack = [_Frame("root", pos)]

    def error(self, message: str, where: ast.Pos) -> None:
        self.diagnostics.append(Diagnostic("error", message, where))

    def parse(self, text: str) -> tuple[ast.TemplatePart, ...]:
        cursor = 0
        for match in TEMPLATE_RE.finditer(text):
            if match.start() > cursor:
                self.stack[-1].parts.append(text[cursor : match.start()])
            cursor = match.end()
            group = 1 if match.group(1) is not None else 2
            inner_start = match.start(group)
            before = text[:inner_start]
            line_off = self.pos.line - 1 + before.count("\n")
            col_off = (self.pos.column + inner_start) if "\n" not in before else 0
            if group == 1 and not match.group(1).strip():
                self.error("an empty {{ }}: write what to insert, e.g. "
                           "{{ profile.first_name }}",
                           ast.Pos(self.pos.file, line_off + 1, max(col_off - 1, 1)))
            elif group == 1:
                token = _parse_fragment(match.group(1), "template_token", self.pos.file,
                                        line_off, col_off, self.diagnostics)
                if token is not None:
                    self.stack[-1].parts.append(token)
            else:
                self.block(match.group(2), line_off, col_off)
        if cursor < len(text):
            self.stack[-1].parts.append(text[cursor:])
        return self.finish()

    def block(self, inner: str, line_off: int, col_off: int) -> None:
        """``{% if %}``, ``{% for %}``, ``{% else %}`` or ``{% end %}``."""
        here = ast.Pos(self.pos.file, line_off + 1, col_off + 1)
        block = _BLOCK_RE.fullmatch(inner)

        def expr(name: str) -> Any:
            assert block is not None
            return _parse_fragment(block.group(name), "expr", self.pos.file, line_off,
                                   col_off + block.start(name), self.diagnostics)

        if block is None:
            self.error("unknown template block: use {% if ... %}, {% for x in ... %}, "
                       "{% else %} or {% end %}", here)
        elif (block.group("if") or block.group("for")) and len(
                self.stack) > MAX_TEMPLATE_NESTING:  # kept open for its end, dropped then
            if not any(f.expr is None and f.kind != "root" for f in self.stack):  # (once)
                self.error(f"template blocks nested more than {MAX_TEMPLATE_NESTING} "
                           "deep: split the content", here)
            self.stack.append(_Frame(block.group("if") or block.group("for"), here))
        elif block.group("if"):
            self.stack.append(_Frame("if", here, expr=expr("cond")))
        elif block.group("for"):
            self.stack.append(_Frame("for", here, expr=expr("items"), var=block.group("var")))
        elif block.group("else"):
            top = self.stack[-1]
            if top.kind != "if" or top.then is not None:
                self.error("{% else %} without an open {% if %}", here)
            else:
                top.then, top.parts = top.parts, []
        elif len(self.stack) == 1:
            self.error("{% end %} without an open block", here)
        else:
            self.close(self.stack.pop())

    def close(self, done: _Frame) -> None:
        if done.expr is None:
            return  # its expression had a syntax error, already reported
        if done.kind == "if":
            then = done.then if done.then is not None else done.parts
            otherwise = done.parts if done.then is not None else []
            node: ast.TemplatePart = ast.TemplateIf(done.expr, tuple(then), tuple(otherwise),
                                                    done.pos)
        else:
            node = ast.TemplateFor(done.var, done.expr, tuple(done.parts), done.pos)
        self.stack[-1].parts.append(node)

    def finish(self) -> tuple[ast.TemplatePart, ...]:
        for frame in self.stack[1:]:
            self.error(f"{{% {frame.kind} %}} is never closed with {{% end %}}", frame.pos)
        root = self.stack[0].parts
        literal = "".join(p for p in root if isinstance(p, str))
        if "{{" in literal or "{%" in literal:
            self.error("unclosed '{{' or '{%' in content template", self.pos)
        return tuple(root)


def _parse_template(
    text: str, pos: ast.Pos, diagnostics: list[Diagnostic]
) -> tuple[ast.TemplatePart, ...]:
    """A content string as literal text, ``{{ ... }}`` tokens, and if/for blocks."""
    return _TemplateParser(pos, diagnostics).parse(text)


def _too_deep(tree: Tree[Token], file: str, line_off: int, col_off: int
              ) -> Diagnostic | None:
    """An error at the first node of ``tree`` deeper than :data:`MAX_SYNTAX_DEPTH`, at
    its position (or its nearest positioned parent's); None when none is. Walked with a
    stack: a tree too deep to transform is not too deep to measure.

    >>> deep = "segment s = " + "(" * 60 + "true" + ")" * 60
    >>> _too_deep(_lark().parse(deep, start="start"), "f.arb", 0, 0).pos
    Pos(file='f.arb', line=1, column=52)
    """
    stack: list[tuple[Tree[Token] | Token, int, tuple[int, int]]] = [(tree, 1, (1, 1))]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, Tree):
            if not node.meta.empty:
                where = (node.meta.line, node.meta.column)
        elif node.line is not None and node.column is not None:
            where = (node.line, node.column)
        if depth > MAX_SYNTAX_DEPTH:
            line, column = where
            return Diagnostic("error", "expression nested too deeply (more than "
                              f"{MAX_SYNTAX_DEPTH} levels of syntax): split it, into "
                              "segments for instance", ast.Pos(
                                  file, line + line_off, column + (col_off if line == 1
                                                                   else 0)))
        if isinstance(node, Tree):
            stack.extend((child, depth + 1, where) for child in reversed(node.children))
    return None


def parse_text(text: str, file: str) -> tuple[ast.Module | None, list[Diagnostic]]:
    """Parse one rule file; never raises for bad input, returns diagnostics instead."""
    try:
        tree: Tree[Token] = _lark().parse(text, start="start")
    except UnexpectedInput as err:
        return None, [_syntax_diagnostic(err, file, 0, 0, text)]
    if (deep := _too_deep(tree, file, 0, 0)) is not None:
        return None, [deep]
    transformer = _ToAst(file)
    items = transformer.transform(tree)
    return ast.Module(file, tuple(items.children)), transformer.diagnostics
