"""Positioned errors and warnings, rendered as ``file:line:col: error: message``.

Every stage of the compiler collects :class:`Diagnostic` values instead of raising,
so one run reports every problem in a ruleset.

>>> d = Diagnostic("error", "unknown segment 'vip'", Pos("a.arb", 1, 7))
>>> print(d.render({"a.arb": "when: vip"}))
a.arb:1:7: error: unknown segment 'vip'
    when: vip
          ^
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsl.ast import Pos

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    message: str
    pos: Pos

    def render(self, sources: dict[str, str]) -> str:
        """The message, the offending source line and a caret under the column."""
        head = f"{self.pos}: {self.severity}: {self.message}"
        lines = sources.get(self.pos.file, "").splitlines()
        if not 1 <= self.pos.line <= len(lines):
            return head
        line = lines[self.pos.line - 1].replace("\t", " ")
        caret = " " * (self.pos.column - 1) + "^"
        return f"{head}\n    {line}\n    {caret}"

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "message": self.message,
            "file": self.pos.file,
            "line": self.pos.line,
            "column": self.pos.column,
        }


class RulesetError(Exception):
    """A ruleset that failed to compile; carries every diagnostic and the sources."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str]) -> None:
        self.diagnostics = diagnostics
        self.sources = sources
        super().__init__(self.render())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def render(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)
