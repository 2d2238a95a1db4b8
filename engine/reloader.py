"""Reloads a ruleset directory safely: compile off the request path, swap atomically.

A reload reads every rule file, and does nothing more when the content hash equals
the serving revision. Otherwise it compiles the new sources; if they have errors
the serving ruleset is kept and the rejection (revision and diagnostics) is kept
for ``GetRuleset`` and logged, else the new ruleset replaces the old one with a
single reference assignment, so a request sees one ruleset or the other, never a
mix. :meth:`RulesetReloader.poll` reloads when a file's size or mtime changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsl.ast import Pos
from dsl.diagnostics import Diagnostic, RulesetError
from dsl.loader import build, read_sources, revision, ruleset_files
from dsl.thresholds import FILE_NAME as THRESHOLDS_FILE
from engine.service import Arbiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    accepted: bool
    changed: bool
    revision: str  # of the files read (the serving one when accepted)
    diagnostics: tuple[Diagnostic, ...] = ()
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    def render(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)


class RulesetReloader:
    """Keeps an :class:`Arbiter` serving the latest ruleset in ``path`` that compiles."""

    def __init__(self, path: str | Path, arbiter: Arbiter,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.arbiter = arbiter
        self.clock = clock
        self.loaded_at = clock()
        self.rejected: ReloadResult | None = None
        self.failures = 0  # rule edits rejected since start (a metric)
        self._signature = self._files_signature()
        self._lock = threading.Lock()
        self.on_swap: list[Callable[[], None]] = []
        """Called after each swap, on the reloading thread (the server settles its heap)."""

    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        try:
            files = ruleset_files(self.path)
        except FileNotFoundError:
            files = []
        if self.path.is_dir() and self.path / THRESHOLDS_FILE not in files:
            files.append(self.path / THRESHOLDS_FILE)  # so that creating it is noticed
        out = []
        for f in files:
            try:
                stat = f.stat()
            except FileNotFoundError:  # deleted between listing and stat
                continue
            out.append((str(f), stat.st_mtime_ns, stat.st_size))
        return tuple(out)

    def poll(self) -> ReloadResult | None:
        """Reload if any rule file was added, removed or modified since the last look."""
        signature = self._files_signature()
        if signature == self._signature:
            return None
        self._signature = signature
        return self.reload()

    def reload(self) -> ReloadResult:
        with self._lock:
            return self._reload()

    def _reload(self) -> ReloadResult:
        serving = self.arbiter.ruleset.revision
        try:
            sources = read_sources(self.path)
        except RulesetError as err:  # a file that is not UTF-8 text
            return self._reject(ReloadResult(False, False, "", tuple(err.diagnostics),
                                             err.sources))
        except (OSError, UnicodeDecodeError) as err:
            diag = Diagnostic("error", f"cannot read ruleset: {err}", Pos(str(self.path), 1, 1))
            return self._reject(ReloadResult(False, False, "", (diag,)))
        new_revision = revision(sources)
        if new_revision == serving:
            self.rejected = None
            return ReloadResult(True, False, serving, sources=sources)
        result = build(sources)
        diagnostics = tuple(sorted(result.diagnostics,
                                   key=lambda d: (d.pos.file, d.pos.line, d.pos.column)))
        if result.failed or result.ruleset is None:
            return self._reject(ReloadResult(False, False, new_revision, diagnostics, sources))
        self.arbiter.swap_ruleset(result.ruleset)
        self.loaded_at = self.clock()
        self.rejected = None
        for hook in self.on_swap:
            hook()
        log.info("ruleset %s -> %s (%d warning(s))", serving, new_revision,
                 len(result.ruleset.warnings))
        return ReloadResult(True, True, new_revision, diagnostics, sources)

    def _reject(self, result: ReloadResult) -> ReloadResult:
        self.rejected = result
        self.failures += 1
        log.error("ruleset %s rejected; still serving %s:\n%s",
                  result.revision or "(unreadable)", self.arbiter.ruleset.revision,
                  result.render())
        return result
