"""``arbiter fmt``: one canonical layout for rule files, comments kept.

Layout: two-space indentation, one blank line between top-level items, fields in
a fixed order, one field per line, expressions printed by :mod:`dsl.printer` and
broken before each top-level ``and``/``or`` when a line would pass 100 columns.

Comments: a comment on its own line stays above the item or field that follows
it (or above the closing brace at the end of a block, or at the end of the file);
a comment after code stays at the end of that item's or field's line. A comment
inside a multi-line expression moves above its field. Formatting is idempotent
and never changes what the rules mean (tests check both with hypothesis).

>>> print(format_text("segment  big=profile.spend>500 # vip\\n", "a.arb"), end="")
segment big = profile.spend > 500  # vip
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsl import ast
from dsl.diagnostics import Diagnostic, RulesetError
from dsl.parser import parse_text
from dsl.printer import print_expr

WIDTH = 100
INDENT = "  "


@dataclass(frozen=True)
class Comment:
    line: int
    depth: int  # brace depth where it starts: 0 is top level
    trailing: bool  # code precedes it on its line
    text: str


def scan_comments(text: str) -> list[Comment]:
    """Every ``#`` comment outside string literals, with its line and brace depth."""
    comments: list[Comment] = []
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        in_string = escaped = False
        for i, ch in enumerate(line):
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth = max(0, depth - 1)
            elif ch == "#":
                comments.append(Comment(number, depth, bool(line[:i].strip()),
                                        line[i:].rstrip()))
                break
    return comments


@dataclass
class Statement:
    """One printed item or field: its source line, its text, comments attached."""

    line: int
    lines: list[str]
    leading: list[str] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)

    def render(self, indent: str) -> list[str]:
        out = [indent + c if c else c for c in self.leading]
        body = [indent + line if line else line for line in self.lines]
        if self.trailing:
            body[-1] += "  " + " ".join(self.trailing)
        return out + body


@dataclass
class Block:
    """A top-level item: its header statement, fields, and comments before '}'."""

    header: Statement
    fields: list[Statement] = field(default_factory=list)
    closing: str | None = None  # "}" for brace blocks
    before_closing: list[str] = field(default_factory=list)

    def render(self) -> list[str]:
        out = self.header.render("")
        for f in self.fields:
            out += f.render(INDENT)
        out += [INDENT + c for c in self.before_closing]
        if self.closing:
            out.append(self.closing)
        return out


# ---- printing of items -------------------------------------------------------------
def _broken(expr: ast.Expr, indent: str) -> list[str]:
    """An expression over several lines, one top-level and/or operand a line."""
    if isinstance(expr, ast.BoolOp):
        parts = [print_expr(o) if not isinstance(o, ast.BoolOp) else f"({print_expr(o)})"
                 for o in expr.operands]
        return [indent + parts[0]] + [f"{indent}{expr.op} {p}" for p in parts[1:]]
    return [indent + print_expr(expr)]


def _expr_lines(head: str, expr: ast.Expr, indent: str) -> list[str]:
    one = f"{head} {print_expr(expr)}"
    if len(indent + one) <= WIDTH or not isinstance(expr, ast.BoolOp):
        return [one]
    return [head] + [line[len(indent):] for line in _broken(expr, indent + INDENT)]


def _listed(head: str, parts: Sequence[str], indent: str = INDENT) -> list[str]:
    """``head`` and the ``parts`` separated by commas, wrapped under :data:`WIDTH` with
    each continuation aligned after the head (a long list of features stays readable).

    >>> for line in _listed("features:", ["recency = days_since(last(purchase))",
    ...                                   "orders = count(purchase, within=90d)",
    ...                                   "visits = count(visit, within=30d)"]):
    ...     print(line)
    features: recency = days_since(last(purchase)), orders = count(purchase, within=90d),
              visits = count(visit, within=30d)
    """
    lines = [head]
    for i, part in enumerate(parts):
        text = part + ("," if i < len(parts) - 1 else "")
        if lines[-1] != head and len(f"{indent}{lines[-1]} {text}") > WIDTH:
            lines.append(" " * len(head) + " " + text)
        else:
            lines[-1] += " " + text
    return lines


def _literal(lit: ast.Literal) -> str:
    return print_expr(lit)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace(
        "\t", "\\t")


def _template_text(parts: tuple[ast.TemplatePart, ...]) -> str:
    """Template parts as source text (before escaping for the string literal)."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, ast.TemplateToken):
            token = print_expr(part.expr)
            for name, args in part.filters:
                token += f" | {name}"
                if args:
                    token += "(" + ", ".join(_literal(a) for a in args) + ")"
            out.append("{{ " + token + " }}")
        elif isinstance(part, ast.TemplateIf):
            out.append("{% if " + print_expr(part.condition) + " %}" + _template_text(part.then))
            if part.otherwise:
                out.append("{% else %}" + _template_text(part.otherwise))
            out.append("{% end %}")
        else:
            out.append("{% for " + part.var + " in " + print_expr(part.items) + " %}"
                       + _template_text(part.body) + "{% end %}")
    return "".join(out)


def _content_string(content: ast.ContentField) -> str:
    kind = "html " if content.html else ""
    return kind + '"' + _escape(_template_text(content.parts)) + '"'


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _schema(item: ast.SchemaBlock) -> Block:
    """A profile, context or thresholds block."""
    block = Block(Statement(item.pos.line, [f"{item.kind} {{"]), closing="}")
    for decl in item.fields:
        text = f"{decl.name}: {decl.type}"
        if decl.pii:
            text += " pii"
        if decl.default is not None:
            text += f" = {_literal(decl.default)}"
        block.fields.append(Statement(decl.pos.line, [text]))
    return block


Shower = Callable[[str, Any, Any], list[str]]
"""(keyword, value, the block's node) -> the field's lines, as ``arbiter fmt`` writes them."""


def _content(keyword: str, entries_of: tuple[ast.ContentField, ...], node: Any) -> list[str]:
    entries = [f"{c.name}: {_content_string(c)}" for c in entries_of]
    one_line = f"content {{ {entries[0]} }}" if len(entries) == 1 else ""
    if one_line and len(INDENT + one_line) <= WIDTH:
        return [one_line]
    return ["content {", *(INDENT + e for e in entries), "}"]


def _thompson(keyword: str, prior: tuple[str, tuple[float, ...]], node: Any) -> list[str]:
    if node.weights:  # written as allocate: weights(...), shown by its own row
        return []
    kind, params = prior
    return [f"allocate: thompson(prior = {kind}({', '.join(_number(p) for p in params)}))"]


def _cap(keyword: str, cap: ast.FrequencyCap, node: Any) -> list[str]:
    return [f"cap: {cap.limit} per {cap.window_text or f'{_number(cap.window_seconds)}s'}"]


def _suppress(keyword: str, rule: ast.Suppression, node: Any) -> list[str]:
    return [f"suppress: {_literal(rule.window)} after {rule.count} {rule.outcome}"]


def _recommend(keyword: str, reco: ast.Recommend, node: Any) -> list[str]:
    options = [str(reco.count)]
    if reco.where is not None:
        options.append(f"where: {print_expr(reco.where)}")
    for rule in reco.exclude:
        window = f" within {_literal(rule.window)}" if rule.window is not None else ""
        options.append(f"exclude: {rule.event}{window}")
    return [f"{keyword}: recommend({', '.join(options)})"]


_SHOWERS: dict[str, Shower] = {
    "names": lambda k, v, n: _listed(f"{k}:", v),
    "name": lambda k, v, n: [f"{k}: {v}"],
    "date": lambda k, v, n: [f"{k}: {v}"],
    "expr": lambda k, v, n: _expr_lines(f"{k}:", v, INDENT),
    "number": lambda k, v, n: [f"{k}: {_number(float(v or 0))}"],
    "int": lambda k, v, n: [f"{k}: {v}"],
    "string": lambda k, v, n: [f'{k}: "{_escape(v)}"'],
    "percent": lambda k, v, n: [f"{k}: {_number(v)}%"],
    "duration": lambda k, v, n: [f"{k}: {_literal(v)}"],
    "cap": _cap,
    "suppress": _suppress,
    "content": _content,
    "recommend": _recommend,
    "score_outcome": lambda k, v, n: [f"{k}: " + (
        f"no {v.event}" if v.kind == "none" else v.event if v.kind == "any"
        else f"sum({v.event}.value)") + f" within {_literal(v.window)}"],
    "cluster_features": lambda k, v, n: _listed(f"{k}:", [
        f"{f.name} = {print_expr(f.expr)}" if f.named else print_expr(f.expr)
        for f in v]) if v else [],
    "features": lambda k, v, n: _listed(f"{k}:", [f for f, _ in v or ()]),
    "weights": lambda k, v, n: [f"allocate: weights({', '.join(_number(w) for w in v)})"]
    if v else [],
    "thompson": _thompson,
    "reward": lambda k, v, n: [f"reward: {v}{'.value' if n.reward_value else ''}"],
}
"""How each kind of field value is written (the parser reads the same kinds)."""


def _block(item: Any, header: str) -> Block:
    """A block with its written fields in canonical order (:func:`dsl.ast.block_fields`)."""
    block = Block(Statement(item.pos.line, [header]), closing="}")
    for row in ast.block_fields(type(item)):
        where = item.field_pos.get(row.keyword)
        value = getattr(item, row.attr)
        if where is None or value is None:
            continue
        lines = _SHOWERS[row.kind](row.keyword, value, item)
        if lines:
            block.fields.append(Statement(where.line, lines))
    return block


def _policy(item: ast.PolicyDef) -> Block:
    block = Block(Statement(item.pos.line, ["policy {"]), closing="}")
    for rule in item.rules:
        block.fields.append(Statement(rule.pos.line, [
            f"{rule.scope} {rule.name}: at most {rule.limit} per {_literal(rule.window)}"]))
    return block


def _item(item: ast.Item) -> Block:
    if isinstance(item, ast.SchemaBlock):
        return _schema(item)
    if isinstance(item, ast.ImportDef):
        return Block(Statement(item.pos.line, [f'import "{_escape(item.path)}"']))
    if isinstance(item, ast.EventsDef):
        return Block(Statement(item.pos.line, _listed("events:", item.names, "")))
    if isinstance(item, ast.PlacementDef):
        return _block(item, f"placement {item.name} {{")
    if isinstance(item, ast.SegmentDef):
        return Block(Statement(item.pos.line,
                               _expr_lines(f"segment {item.name} =", item.condition, "")))
    if isinstance(item, ast.ActionDef):
        return _block(item, f"action {item.name} {{")
    if isinstance(item, ast.ClusterDef):
        return _block(item, f"cluster {item.name} {{")
    if isinstance(item, ast.ScoreDef):
        return _block(item, f"score {item.name} {{")
    if isinstance(item, ast.PolicyDef):
        return _policy(item)
    if isinstance(item, ast.ModelDef):
        return _block(item, f"model on {item.placement} {{")
    return _block(item, f"experiment {item.name} on {item.placement} {{")


# ---- comments -------------------------------------------------------------------------
def _attach(blocks: list[Block], comments: list[Comment], source: list[str]) -> list[str]:
    """Attach each comment to a statement; returns comments left for the end of file.

    Blank lines around top-level comments are kept (one at most), so a file's
    header comment stays apart from the first item.
    """
    trailer: list[str] = []

    def blank(line: int) -> bool:
        return 1 <= line <= len(source) and not source[line - 1].strip()

    def lead(statement: Statement, comment: Comment) -> None:
        if statement.leading and blank(comment.line - 1):
            statement.leading.append("")
        statement.leading.append(comment.text)
        if blank(comment.line + 1) and statement.line > comment.line + 1:
            statement.leading.append("")

    for comment in comments:
        owner_index = max((i for i, b in enumerate(blocks) if b.header.line <= comment.line),
                          default=-1)
        owner = blocks[owner_index] if owner_index >= 0 else None
        if comment.trailing and owner is not None:
            statements = [owner.header, *owner.fields]
            # the last statement starting on or before the comment's line
            target = [s for s in statements if s.line <= comment.line][-1]
            target.trailing.append(comment.text)
        elif comment.depth > 0 and owner is not None and owner.closing:
            following = [f for f in owner.fields if f.line > comment.line]
            if following:
                following[0].leading.append(comment.text)
            else:
                owner.before_closing.append(comment.text)
        else:
            later = [b for b in blocks if b.header.line > comment.line]
            if later:
                lead(later[0].header, comment)
            else:
                if trailer and blank(comment.line - 1):
                    trailer.append("")
                trailer.append(comment.text)
    for block in blocks:  # a blank line is kept only between comments, or before the item
        leading = block.header.leading
        while leading and leading[0] == "":
            leading.pop(0)
        block.header.leading = [c for i, c in enumerate(leading)
                                if c or (i > 0 and leading[i - 1])]
    return trailer


def format_module(module: ast.Module, text: str) -> str:
    """The canonical text of a parsed module; ``text`` is its source (for comments)."""
    blocks = [_item(item) for item in module.items]
    trailer = _attach(blocks, scan_comments(text), text.splitlines())
    out: list[str] = []
    for block in blocks:
        if out:
            out.append("")
        out += block.render()
    if trailer:
        if out:
            out.append("")
        out += trailer
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, path: str = "<rules>.arb") -> str:
    """Format one file; raises :class:`RulesetError` if it does not parse."""
    module, diagnostics = parse_text(text, path)
    errors = [d for d in diagnostics if d.severity == "error"]
    if module is None or errors:
        raise RulesetError(errors or [Diagnostic("error", "cannot parse",
                                                 ast.Pos(path, 1, 1))], {path: text})
    return format_module(module, text)
