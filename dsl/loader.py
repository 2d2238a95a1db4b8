"""A ruleset directory → compiled :class:`~dsl.ruleset.Ruleset`, in named stages.

The stages run in the order of :data:`STAGES`; each collects diagnostics. Any error
stops the pipeline before compilation and raises :class:`RulesetError`, carrying
every diagnostic found so far (all files are parsed and checked in one run).

>>> rs = load_text('placement home { channels: web }')
>>> sorted(rs.placements)
['home']
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsl import ast
from dsl.catalogue import FILE_NAMES as CATALOGUE_FILES
from dsl.catalogue import is_catalogue_file, load_catalogue
from dsl.checker import CheckedRuleset, check
from dsl.compiler import compile_ruleset
from dsl.diagnostics import Diagnostic, RulesetError
from dsl.lint import lint
from dsl.parser import parse_text
from dsl.ruleset import Ruleset
from dsl.thresholds import FILE_NAME as THRESHOLDS_FILE
from dsl.thresholds import apply_overrides, is_thresholds_file

RULE_SUFFIX = ".arb"


@dataclass
class Build:
    """State carried through the stages of one ruleset load."""

    sources: dict[str, str]
    modules: list[ast.Module] = field(default_factory=list)
    checked: CheckedRuleset | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    ruleset: Ruleset | None = None

    catalogue: tuple[dict[str, object], ...] = ()  # items.jsonl, checked
    unparsed: int = 0  # files whose syntax errors left no module
    cost: int = 0  # expression nodes evaluated per decision, at most

    @property
    def failed(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)


Parsed = tuple[ast.Module | None, tuple[Diagnostic, ...]]
_last_parsed: dict[tuple[str, str], Parsed] = {}
"""The files of the last build, parsed (syntax trees are immutable): a reload after an
edit parses only the files that changed (parsing is most of a build: 4,000 segments and
actions in one file, ~5 s)."""
_last_parsed_lock = threading.Lock()


def _parse(build: Build) -> None:
    with _last_parsed_lock:
        known = dict(_last_parsed)
    parsed: dict[tuple[str, str], Parsed] = {}
    for path, text in build.sources.items():
        if is_thresholds_file(path) or is_catalogue_file(path):
            continue
        found = known.get((path, text))
        if found is None:
            module_of, listed = parse_text(text, path)
            found = (module_of, tuple(listed))
        parsed[path, text] = found
        module, diagnostics = found
        build.diagnostics.extend(diagnostics)
        if module is not None:
            build.modules.append(module)
        else:
            build.unparsed += 1
    with _last_parsed_lock:
        _last_parsed.clear()
        _last_parsed.update(parsed)


def _check(build: Build) -> None:
    build.checked, diagnostics = check(build.modules)
    build.diagnostics.extend(diagnostics)
    for module in build.modules:  # every import must have been read with the ruleset
        for item in module.items:
            if isinstance(item, ast.ImportDef):
                target = imported_path(module.path, item.path)
                if not any(Path(p) == target or Path(p).is_relative_to(target)
                           for p in build.sources):
                    build.diagnostics.append(Diagnostic(
                        "error", f"cannot import \"{item.path}\": no rule files at {target}",
                        item.pos))
    for path, text in build.sources.items():
        if is_thresholds_file(path):
            build.diagnostics.extend(apply_overrides(build.checked, path, text))
        elif is_catalogue_file(path):
            checked = build.checked
            items, found = load_catalogue(
                path, text, checked.items if checked.items_declared else None)
            build.catalogue += items
            build.diagnostics.extend(found)


def _lint(build: Build) -> None:
    assert build.checked is not None
    warnings, build.cost = lint(build.checked)
    build.diagnostics.extend(warnings)


def _compile(build: Build) -> None:
    assert build.checked is not None
    warnings = tuple(d.render(build.sources) for d in build.diagnostics)
    build.ruleset = dataclasses.replace(
        compile_ruleset(build.checked, build.sources, revision(build.sources), warnings,
                        build.cost), catalogue=build.catalogue)


STAGES: tuple[tuple[str, Callable[[Build], None]], ...] = (
    ("parse", _parse),
    ("check", _check),
    ("lint", _lint),
    ("compile", _compile),
)


def revision(sources: dict[str, str]) -> str:
    """Content hash of a ruleset: sha256 over its sorted (relative name, text) pairs, 12 hex
    digits. Names are relative to the files' common directory, so the same files give the
    same revision however the path was spelled and wherever a replica keeps them.

    >>> rule = "segment s = true"
    >>> revision({"/srv/a/rules/x.arb": rule}) == revision({"x.arb": rule})
    True
    """
    digest = hashlib.sha256()
    names = _relative_names(sources)
    for path in sorted(sources, key=names.__getitem__):
        digest.update(names[path].encode() + b"\0" + sources[path].encode() + b"\0")
    return digest.hexdigest()[:12]


def _relative_names(sources: dict[str, str]) -> dict[str, str]:
    absolute = {path: os.path.abspath(path) for path in sources}
    if not absolute:
        return {}
    root = os.path.commonpath([os.path.dirname(a) for a in absolute.values()])
    return {path: Path(os.path.relpath(a, root)).as_posix() for path, a in absolute.items()}


IMPORT_RE = re.compile(r'^\s*import\s+"((?:[^"\\\n]|\\.)*)"', re.MULTILINE)


def _rule_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.rglob(f"*{RULE_SUFFIX}"))


def imported_path(importer: str, target: str) -> Path:
    """Where ``import "target"`` in file ``importer`` points."""
    return Path(os.path.normpath(Path(importer).parent / target))


def ruleset_files(path: str | Path) -> list[Path]:
    """The files of a ruleset: its ``*.arb`` files, those they import (transitively),
    and ``thresholds.toml`` at its root. Missing imports are left to the checker."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no ruleset at {root}")
    files = _rule_files(root)
    if not files:
        raise FileNotFoundError(f"no {RULE_SUFFIX} files under {root}")
    seen = {f.resolve() for f in files}
    queue = list(files)
    while queue:
        current = queue.pop(0)
        try:
            text = current.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        for match in IMPORT_RE.finditer(text):
            target = imported_path(str(current), match.group(1))
            for found in _rule_files(target) if target.exists() else []:
                if found.resolve() not in seen:
                    seen.add(found.resolve())
                    files.append(found)
                    queue.append(found)
    for extra in (THRESHOLDS_FILE, *CATALOGUE_FILES):
        if root.is_dir() and (root / extra).is_file():
            files.append(root / extra)
    return files


def read_sources(path: str | Path) -> dict[str, str]:
    """Every file of the ruleset at ``path`` (see :func:`ruleset_files`), by display path;
    a file that is not UTF-8 text is a :class:`RulesetError` at its first such byte."""
    return {str(f): _text(f) for f in ruleset_files(path)}


def _text(path: Path) -> str:
    r"""The file's text (a byte order mark skipped, as Windows editors write one).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("wb", suffix=".arb", delete=False) as f:
    ...     _ = f.write('segment s = context.city == "Montr\xe9al"\n'.encode("cp1252"))
    >>> _text(Path(f.name))
    Traceback (most recent call last):
    dsl.diagnostics.RulesetError: ...arb:1:35: error: not UTF-8 text (byte 0xe9): save ...
    ...
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:  # (a Windows editor's cp1252 "é", say)
        start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        column = len(data[start:err.start].decode("utf-8-sig", errors="replace")) + 1
        where = ast.Pos(str(path), line, column)
        raise RulesetError([Diagnostic(
            "error", f"not UTF-8 text (byte 0x{data[err.start]:02x}): save the file as UTF-8",
            where)], {str(path): data.decode("utf-8-sig", errors="replace")}) from None


def build(sources: dict[str, str]) -> Build:
    """Run the stages; never compiles a ruleset with errors.

    Checking runs even after parse-stage errors when every file produced a module
    (e.g. a field set twice), so one run reports all it can; a file with a syntax
    error stops before checking, since its names would be reported as unknown.
    """
    result = Build(sources)
    for name, stage in STAGES:
        if result.failed and (name in ("lint", "compile") or result.unparsed):
            break
        stage(result)
    return result


def load_sources(sources: dict[str, str]) -> Ruleset:
    """Compile a ruleset from ``{path: text}``; raises :class:`RulesetError` on errors."""
    result = build(sources)
    if result.failed or result.ruleset is None:
        ordered = sorted(result.diagnostics, key=lambda d: (d.pos.file, d.pos.line, d.pos.column))
        raise RulesetError(ordered, sources)
    return result.ruleset


def load_path(path: str | Path) -> Ruleset:
    """Compile the ruleset in a directory (or single file)."""
    return load_sources(read_sources(path))


def load_text(text: str, name: str = "<rules>.arb") -> Ruleset:
    """Compile a ruleset held in one string (tests, examples)."""
    return load_sources({name: text})
