"""``arbiter track EVENTS.jsonl``: load behavioural events and traits into a running server.

A nightly CRM export, a backfill of past purchases: one JSON object a line, sent as
TrackEvents (``--concurrency`` in flight, a customer's lines in file order). Every line
has an ``event_id`` (its own, or the file's digest and its line number), so a run that
stopped half way can be run again: what was applied is answered as a duplicate and
counted once (within the 24 hours a server remembers ids). Transient failures
(``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...) are retried with backoff under the same id,
and a line that still fails stops the run (the server is down: run it again later); a
refused line (``INVALID_ARGUMENT``, ...) is reported as ``FILE:LINE`` and the run goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.cli.client import add_client_arguments, open_channel
from engine.cli.common import json_lines, key_column

LINE_KEYS = frozenset({"user_id", "event_type", "properties", "traits", "timestamp",
                       "item_id", "event_id"})
"""The keys a line of ``arbiter track`` may have."""
RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
"""Statuses a line is sent again for (its event_id makes that safe)."""
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)")
"""A string value that is a point in time (sent as a timestamp): a date-time with its
offset, ``2026-11-01T09:30:00Z``."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="load events and traits (JSON lines) into a server")
    p.add_argument("file", metavar="EVENTS.jsonl",
                   help='one event a line: {"user_id": ..., "event_type": ..., optionally '
                        '"properties", "traits", "timestamp", "item_id", "event_id"}')
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of a server")
    p.add_argument("--concurrency", type=int, default=16, help="TrackEvents in flight")
    p.add_argument("--retries", type=int, default=5,
                   help="sends of a line after a transient failure, with backoff")
    add_client_arguments(p)
    p.set_defaults(func=run)


class Stopped(Exception):
    """A line failed for a transient reason after every retry: the run stops there."""


@dataclass
class Tally:
    applied: int = 0
    duplicates: int = 0
    refused: list[str] = field(default_factory=list)  # "FILE:LINE: STATUS: details"

    def line(self) -> str:
        return (f"{self.applied:,} applied, {self.duplicates:,} already applied, "
                f"{len(self.refused):,} refused")


def run(args: argparse.Namespace) -> int:
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    if args.concurrency < 1 or args.retries < 0:
        print("arbiter track: --concurrency must be at least 1, --retries at least 0",
              file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        digest, total = file_digest(path)
        for _ in event_lines(path, digest):
            pass
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"arbiter track: {err}", file=sys.stderr)
        return 2
    tally = Tally()
    with open_channel(args) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        window: deque[tuple[int, str, Any, Any]] = deque()  # (line, user, request, future)
        in_flight: dict[str, int] = {}  # user -> calls of theirs in the window
        done, stopped = 0, ""
        try:
            for number, request in event_lines(path, digest):
                while window and (len(window) >= args.concurrency
                                  or request.user_id in in_flight):
                    _finish(window.popleft(), stub, args, path, tally, in_flight)
                    done += 1
                    _progress(done, total)
                in_flight[request.user_id] = in_flight.get(request.user_id, 0) + 1
                window.append((number, request.user_id, request,
                               stub.TrackEvent.future(request, timeout=10)))
            while window:
                _finish(window.popleft(), stub, args, path, tally, in_flight)
                done += 1
                _progress(done, total)
        except Stopped as err:
            stopped = str(err)
            for *_, future in window:  # the lines in flight may or may not land: a run
                future.cancel()        # again answers those that did as duplicates
    print(file=sys.stderr)
    for refusal in tally.refused:
        print(refusal, file=sys.stderr)
    if stopped:
        print(f"arbiter track: stopped at {stopped}; run it again to go on (what was "
              "applied answers as already applied)", file=sys.stderr)
    print(f"arbiter track: {tally.line()}", file=sys.stderr)
    return 1 if tally.refused or stopped else 0


def _finish(entry: tuple[int, str, Any, Any], stub: Any, args: argparse.Namespace,
            path: Path, tally: Tally, in_flight: dict[str, int]) -> None:
    """Wait for one line's answer, sending it again after transient failures (raises
    Stopped when they outlast the retries)."""
    import grpc

    number, user, request, future = entry
    try:
        for attempt in range(args.retries + 1):
            try:
                response = future.result()
            except grpc.RpcError as err:
                code = err.code()
                if code.name in RETRIED:
                    if attempt == args.retries:
                        raise Stopped(f"{path}:{number}: {code.name} after {attempt + 1} "
                                      f"attempts: {err.details()}") from None
                    time.sleep(min(5.0, 0.1 * 2 ** attempt))
                    future = stub.TrackEvent.future(request, timeout=10)
                    continue
                tally.refused.append(f"{path}:{number}: {code.name}: "
                                     f"{err.details()}")
                return
            if response.duplicate:
                tally.duplicates += 1
            else:
                tally.applied += 1
            return
    finally:
        left = in_flight[user] - 1
        if left:
            in_flight[user] = left
        else:
            del in_flight[user]


def _progress(done: int, total: int) -> None:
    print(f"\rtracked {done:,}/{total:,}", end="", file=sys.stderr, flush=True)


def file_digest(path: Path) -> tuple[str, int]:
    """A digest of the file's bytes (the stem of the event ids it gets) and its lines."""
    digest, lines = hashlib.blake2b(digest_size=8), 0
    with path.open("rb") as data:
        for line in data:
            digest.update(line)
            lines += bool(line.strip())
    return digest.hexdigest(), lines


def event_lines(path: Path, digest: str) -> Iterator[tuple[int, Any]]:
    """Each line's number and TrackEventRequest, a line at a time; raises ValueError
    naming ``path:line:col`` for a line that is not such an event.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write('{"user_id": "ann", "event_type": "visit"}\\n'
    ...                 '{"user_id": "bob", "event_type": "visit", "value": 3}\\n')
    >>> number, first = next(event_lines(Path(f.name), "f00d"))
    >>> number, first.event_id
    (1, 'f00d:1')
    >>> list(event_lines(Path(f.name), "f00d"))
    Traceback (most recent call last):
    ValueError: ...jsonl:2:43: value: not read; a line has user_id, event_type and, ...
    """
    from engine.grpc import convert
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb

    for number, line, item in json_lines(path):
        where = f"{path}:{number}:{{}}"
        for key in item:
            if key not in LINE_KEYS:
                raise ValueError(where.format(key_column(line, key)) + f": {key}: not read; "
                                 "a line has user_id, event_type and, optionally, "
                                 + ", ".join(sorted(LINE_KEYS - {"user_id", "event_type"})))
        for key in ("user_id", "event_type", "item_id", "event_id"):
            value = item.get(key)
            if (key in ("user_id", "event_type") or value is not None) and (
                    not isinstance(value, str) or not value):
                raise ValueError(where.format(key_column(line, key))
                                 + f": {key}: must be a non-empty string")
        maps = {}
        for key in ("properties", "traits"):
            value = item.get(key) or {}
            if not isinstance(value, dict):
                raise ValueError(where.format(key_column(line, key))
                                 + f": {key}: not a JSON object")
            for name, v in value.items():
                if v is None:
                    raise ValueError(where.format(key_column(line, name))
                                     + f": {key}.{name}: null (leave it out instead)")
            maps[key] = {name: convert.to_value(_value(v)) for name, v in value.items()}
        try:
            request = pb.TrackEventRequest(
                user_id=item["user_id"], event_type=item["event_type"],
                item_id=item.get("item_id") or "",
                event_id=item.get("event_id") or f"{digest}:{number}", **maps)
        except ValueError as err:  # text that is not Unicode (a lone surrogate)
            raise ValueError(f"{path}:{number}:1: {err}") from None
        if "timestamp" in item:
            try:
                request.timestamp.CopyFrom(convert.timestamp(_seconds(item["timestamp"])))
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(where.format(key_column(line, "timestamp"))
                                 + f": timestamp: {err}") from None
        yield number, request


def _value(value: Any) -> Any:
    """A JSON value as TrackEvent sends it: a date-time string with its offset is a time."""
    if isinstance(value, str) and ISO_TIME.fullmatch(value):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _seconds(value: Any) -> float:
    """A line's timestamp: epoch seconds, or an ISO 8601 date-time with its offset."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be epoch seconds or an ISO 8601 date-time with its offset")
    if isinstance(value, str):
        if not ISO_TIME.fullmatch(value):
            raise ValueError("must be epoch seconds or an ISO 8601 date-time with its "
                             f"offset, not {value!r}")
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value)

