"""``arbiter serve`` settings from flags, ``ARBITER_*`` variables and a TOML file.

Precedence: a flag given on the command line, then the environment variable
(``--metrics-port`` → ``ARBITER_METRICS_PORT``), then the file (``--config`` or
``$ARBITER_CONFIG``: top-level keys named like the flags, ``metrics-port = 9100``),
then the built-in default. ``arbiter serve --print-config`` shows the result and where
each value came from.

>>> p = argparse.ArgumentParser()
>>> _ = p.add_argument("--port", type=int, default=50051)
>>> _ = p.add_argument("--access-log", action="store_true")
>>> layered = Layered(p)
>>> args = p.parse_args([])
>>> layered.resolve(args, {"ARBITER_PORT": "9"}, {"access-log": True})
{'port': 'env ARBITER_PORT', 'access_log': 'file'}
>>> args.port, args.access_log
(9, True)
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNSET: Any = object()
TRUE = {"1", "true", "yes", "on"}


class Layered:
    """Wraps a parser's options: their defaults are remembered and replaced by UNSET, so
    after parsing a value is known to come from the command line or not."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.options = [a for a in parser._actions
                        if a.option_strings and a.dest not in ("help", "config", "print_config")]
        self.defaults = {a.dest: a.default for a in self.options}
        parser.set_defaults(**{a.dest: UNSET for a in self.options})

    def resolve(self, args: argparse.Namespace, env: Mapping[str, str],
                file: Mapping[str, Any]) -> dict[str, str]:
        """Fill every UNSET option in ``args``; returns where each value came from."""
        sources: dict[str, str] = {}
        for action in self.options:
            dest, flag = action.dest, action.option_strings[-1].lstrip("-")
            variable = "ARBITER_" + dest.upper()
            if getattr(args, dest) is not UNSET:
                sources[dest] = "flag"
                continue
            if variable in env:
                setattr(args, dest, _convert(action, env[variable]))
                sources[dest] = f"env {variable}"
            elif flag in file or dest in file:
                setattr(args, dest, file.get(flag, file.get(dest)))
                sources[dest] = "file"
            else:
                setattr(args, dest, self.defaults[dest])
                sources[dest] = "default"
        return sources


def _convert(action: argparse.Action, text: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        return text.strip().lower() in TRUE
    return action.type(text) if callable(action.type) else text


def read_file(path: str | None) -> dict[str, Any]:
    """The settings file (TOML), or nothing."""
    if not path:
        return {}
    return dict(tomllib.loads(Path(path).read_text(encoding="utf-8")))


def render(args: argparse.Namespace, layered: Layered, sources: Mapping[str, str]) -> str:
    """The resolved settings as TOML, each with where it came from."""
    lines = []
    for action in layered.options:
        value = getattr(args, action.dest)
        if value is None:
            continue
        flag = action.option_strings[-1].lstrip("-")
        text = repr(value).replace("'", '"') if not isinstance(value, bool) else str(value).lower()
        lines.append(f"{flag} = {text}  # {sources.get(action.dest, 'default')}")
    return "\n".join(lines)
