"""What the commands share: loading a ruleset, building a store, common arguments.

The CLI is a composition root: it is where a store is built from configuration
(``--redis URL`` or the in-memory default) and handed to the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dsl.diagnostics import RulesetError
from dsl.loader import load_path, read_sources
from dsl.ruleset import Ruleset
from engine.cli.typed_values import from_flag
from engine.ports import LEARNING_LOG_MAX_ENTRIES, Store, StoreFactory
from engine.requests import InvalidArgument

EXAMPLE_RULES = "rulesets/retail"

T = TypeVar("T")


def default_rules() -> str:
    """``rulesets/retail`` under the working directory (a checkout), else the copy of the
    example shipped in the package (an installed wheel)."""
    if Path(EXAMPLE_RULES).exists():
        return EXAMPLE_RULES
    import rulesets

    return str(Path(rulesets.__file__).parent / "retail")


def open_store(redis_url: str | None, check: bool = True, replicas: int = 0,
               log_max_entries: int | None = None, profile_retention: float = 0.0,
               record_layout: str = "compact", namespace: str = "arb") -> Store:
    """The Redis store at ``redis_url``, or a new in-memory one. ``check``: fail now
    (StoreUnavailable) when Redis does not answer; a server does not check, it starts
    degraded and not ready until Redis answers. A Redis Cluster node is refused
    (``RedisClusterNotSupported``, a ValueError) whenever it answers. ``replicas``:
    Redis replicas that must have a write before it is acknowledged;
    ``log_max_entries``: the learning log's cap (None: the store's default);
    ``profile_retention``: seconds a profile is kept after its last change (0: for ever);
    ``record_layout``: how Redis decision records are written (engine.records);
    ``namespace``: the prefix of every Redis key (one per deployment sharing a Redis)."""
    if redis_url:
        # only when asked: redis is optional here
        from adapters.redis_store import RedisStore, check_server

        for warning in check_server(redis_url):  # a Cluster node is refused
            logging.getLogger("arbiter").warning("%s", warning)
        store = RedisStore(
            redis_url, replicas=replicas, profile_retention=profile_retention,
            record_layout=record_layout, namespace=namespace,
            log_max_entries=(LEARNING_LOG_MAX_ENTRIES if log_max_entries is None
                             else log_max_entries))
        if check:
            store.ping()
        return store
    from adapters.memory import MemoryStore

    return MemoryStore(profile_retention=profile_retention)


def memory_store_factory() -> StoreFactory:
    """Fresh in-memory stores on a given clock (``arbiter test``, ``replay``, local decide)."""
    from adapters.memory import MemoryStore

    return MemoryStore


def load_ruleset(path: str, command: str) -> Ruleset | None:
    """The compiled ruleset, or None after printing why it cannot be loaded."""
    try:
        return load_path(path)
    except RulesetError as err:
        print(err.render(), file=sys.stderr)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"arbiter {command}: {err}", file=sys.stderr)
    return None


def read_rule_files(path: str, command: str) -> dict[str, str] | None:
    """The ruleset's files as ``{path: text}``, or None after printing why not."""
    try:
        return read_sources(path)
    except RulesetError as err:  # a file that is not UTF-8 text, at its first such byte
        print(err.render(), file=sys.stderr)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"arbiter {command}: {err}", file=sys.stderr)
    return None


def parse_context(pairs: Sequence[str], schema: Any = None) -> dict[str, Any]:
    """``key=value`` pairs; typed by the ruleset's schema when known, else guessed
    (:func:`engine.cli.typed_values.from_flag`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"context.{key}", "expected key=value")
        kind = schema[key].type if schema is not None and key in schema else None
        out[key] = from_flag(f"context.{key}", raw, kind)
    return out


def add_request_arguments(parser: argparse.ArgumentParser, *, user_required: bool,
                          default_seed: int | None = None,
                          default_user: str | None = "explain-user") -> None:
    """The Decide request: --user, --placement, --channel, --context, --limit, --seed,
    --at."""
    if user_required:
        parser.add_argument("--user", required=True)
    else:
        parser.add_argument("--user", default=default_user)
    parser.add_argument("--placement", required=True)
    parser.add_argument("--channel", default="")
    parser.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--seed", type=int, default=default_seed)
    parser.add_argument("--at", metavar="TIME",
                        help="decide for this time (a send scheduled for later: caps, "
                             "windows and the send hour as then): an ISO 8601 date-time "
                             "with its offset or epoch seconds; default now")


def decide_time(raw: str | None) -> float | None:
    """``--at`` as epoch seconds (None: now); InvalidArgument naming ``at``.

    >>> decide_time("2026-12-24T09:00:00+01:00"), decide_time("1798099200"), decide_time(None)
    (1798099200.0, 1798099200.0, None)
    """
    if raw is None:
        return None
    from engine.cli.typed_values import as_declared

    try:
        value: Any = float(raw)
    except ValueError:
        value = raw
    return float(as_declared("at", value, "timestamp").timestamp())


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


def add_snapshot_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot-key-file", metavar="PATH",
                        help="key that signs model snapshots (default: "
                             "$ARBITER_SNAPSHOT_KEY; with Redis and no key, snapshots are "
                             "off and a restart relearns from what the learning log holds)")


def snapshot_key(args: argparse.Namespace) -> bytes | None:
    """The key model snapshots are signed with (engine/learning/snapshots.py).

    In memory, snapshots never leave the process: a random key serves. With Redis,
    replicas must share the operator's key; without one, snapshots are off.
    """
    if args.snapshot_key_file:
        return Path(args.snapshot_key_file).read_bytes().strip()
    if os.environ.get("ARBITER_SNAPSHOT_KEY"):
        return os.environ["ARBITER_SNAPSHOT_KEY"].encode()
    if not args.redis:
        return secrets.token_bytes(32)
    logging.getLogger("arbiter").warning(
        "no snapshot key (ARBITER_SNAPSHOT_KEY or --snapshot-key-file): model snapshots "
        "are off; a restart relearns from what the learning log holds (at most "
        "--learning-log-max entries)")
    return None


def key_column(line: str, key: str) -> int:
    """Where ``key`` is named on a JSON ``line`` (1 when it is not: the line as a whole).

    >>> key_column('{"user_id": "ann", "oops": 1}', "oops")
    20
    """
    return line.find(json.dumps(key)) + 1 or 1


def json_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The objects of a JSON-lines file with their line numbers and text, a line at a
    time (memory stays flat), blank lines skipped; raises ValueError naming
    ``path:line:col`` for a line that is not a JSON object."""
    with path.open(encoding="utf-8-sig") as lines:  # (a BOM, as Excel writes, is not text)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}:{err.colno}: not JSON ({err.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}:1: not a JSON object")
            yield number, line, item


CALL_BYTES = 900_000
"""A batch call's requests at most, serialized (a server refuses messages over 1 MiB)."""


def calls(lines: Iterator[tuple[T, Any]], size: int) -> Iterator[list[tuple[T, Any]]]:
    """``(key, request message)`` pairs in calls of at most ``size`` requests and
    :data:`CALL_BYTES` (one request is always under it: the requests' own limits keep
    one to about half a megabyte).

    >>> from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    >>> big = [(n, pb.DecideRequest(user_id="u", placement="p" * 200_000)) for n in range(9)]
    >>> [len(call) for call in calls(iter(big), 5)]
    [4, 4, 1]
    """
    chunk: list[tuple[T, Any]] = []
    used = 0
    for key, request in lines:
        weight = request.ByteSize() + 8  # (its tag and length in the batch)
        if chunk and (len(chunk) == size or used + weight > CALL_BYTES):
            yield chunk
            chunk, used = [], 0
        chunk.append((key, request))
        used += weight
    if chunk:
        yield chunk
