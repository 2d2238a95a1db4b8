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
import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNSET: Any = object()
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
OTHER_VARIABLES = frozenset({"ARBITER_CONFIG", "ARBITER_TOKENS", "ARBITER_TOKEN",
                             "ARBITER_SNAPSHOT_KEY"})
"""``ARBITER_*`` variables read besides the flags' own (the client commands' token too)."""


class SettingsError(ValueError):
    """A setting that cannot be used, named with where it came from."""


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
        flags = [a.option_strings[-1].lstrip("-") for a in self.options]
        known = set(flags) | {a.dest for a in self.options}
        unknown = sorted(set(file) - known)
        if unknown:
            raise SettingsError("settings file: " + "; ".join(
                f"unknown key '{key}'{_closest(key.replace('_', '-'), flags)}"
                for key in unknown))
        sources: dict[str, str] = {}
        for action in self.options:
            dest, flag = action.dest, action.option_strings[-1].lstrip("-")
            variable = "ARBITER_" + dest.upper()
            # every value given is checked, even one a higher layer overrides
            from_env = (_convert(action, env[variable], variable) if variable in env
                        else UNSET)
            from_file = (_convert(action, file.get(flag, file.get(dest)),
                                  f"settings file: {flag}")
                         if flag in file or dest in file else UNSET)
            if getattr(args, dest) is not UNSET:
                sources[dest] = "flag"
            elif from_env is not UNSET:
                setattr(args, dest, from_env)
                sources[dest] = f"env {variable}"
            elif from_file is not UNSET:
                setattr(args, dest, from_file)
                sources[dest] = "file"
            else:
                setattr(args, dest, self.defaults[dest])
                sources[dest] = "default"
        return sources

    def unknown_variables(self, env: Mapping[str, str]) -> list[str]:
        """``ARBITER_*`` variables that are no setting (a typo in a deployment's manifest
        would otherwise be ignored without a word), each with the closest one.

        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--metrics-port", type=int)
        >>> Layered(p).unknown_variables({"ARBITER_METRIC_PORT": "9", "ARBITER_TOKEN": "t"})
        ["ARBITER_METRIC_PORT is not a setting (did you mean 'ARBITER_METRICS_PORT'?)"]
        """
        names = ["ARBITER_" + a.dest.upper() for a in self.options]
        return [f"{name} is not a setting{_closest(name, names)}" for name in sorted(env)
                if name.startswith("ARBITER_") and name not in names
                and name not in OTHER_VARIABLES and not name.startswith("ARBITER_FUZZ_")]


def _closest(name: str, options: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """The value as the flag's own type would parse it; SettingsError naming ``where``."""
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE | FALSE:
            return text in TRUE
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SettingsError(f"{where}: expected a single value, got {value!r}")
    try:
        return action.type(str(value)) if callable(action.type) else str(value)
    except (TypeError, ValueError) as err:
        kind = {int: "a whole number", float: "a number"}.get(action.type)  # type: ignore[call-overload]
        raise SettingsError(f"{where}: expected {kind}, got {value!r}" if kind
                            else f"{where}: {err}") from None


def read_file(path: str | None) -> dict[str, Any]:
    """The settings file (TOML), or nothing."""
    if not path:
        return {}
    try:
        return dict(tomllib.loads(Path(path).read_text(encoding="utf-8-sig")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SettingsError(f"settings file {path}: {err}") from None


def render(args: argparse.Namespace, layered: Layered, sources: Mapping[str, str]) -> str:
    """The resolved settings as TOML, each with where it came from."""
    lines = []
    for action in layered.options:
        value = getattr(args, action.dest)
        flag = action.option_strings[-1].lstrip("-")
        if value is None:  # no value (its flag's help says what that means): a comment
            lines.append(f"# {flag} = (unset)  # {sources.get(action.dest, 'default')}")
            continue
        if isinstance(value, str):
            value = redacted(value)
        text = repr(value).replace("'", '"') if not isinstance(value, bool) else str(value).lower()
        lines.append(f"{flag} = {text}  # {sources.get(action.dest, 'default')}")
    return "\n".join(lines)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@")


def redacted(value: str) -> str:
    """``value`` with a URL's password masked (what ``--print-config`` shows: settings
    end up in logs and tickets).

    >>> redacted("rediss://app:s3cret@redis.internal:6380/0")
    'rediss://app:***@redis.internal:6380/0'
    >>> redacted("redis+sentinel://:pw@a:26379,b:26379/mymaster"), redacted("redis://h/0")
    ('redis+sentinel://:***@a:26379,b:26379/mymaster', 'redis://h/0')
    """
    return _URL_PASSWORD.sub(r"\1***@", value)
