"""``arbiter track EVENTS.jsonl``: load behavioural events and traits into a running server.

A nightly CRM export, a backfill of past purchases: one JSON object a line, sent in
TrackEventBatch calls of ``--batch-size`` lines, one call at a time (a customer's lines
in file order). Every line has an ``event_id`` (its own, or the file's digest and its
line number), so a run that stopped half way can be run again: what was applied is
answered as a duplicate and counted once (within the 24 hours a server remembers ids).
Transient failures (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...) are retried with
backoff under the same ids (an event retried is applied after those that followed it
in its call), and one that still fails stops the run (the server or its store is down:
run it again later); a refused line (``INVALID_ARGUMENT``, ...) is reported as
``FILE:LINE`` and the run goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.cli.client import add_client_arguments, open_channel
from engine.cli.common import calls, json_lines, key_column

LINE_KEYS = frozenset({"user_id", "event_type", "properties", "traits", "timestamp",
                       "item_id", "event_id"})
"""The keys a line of ``arbiter track`` may have."""
RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
"""Statuses an event or a call is sent again for (event ids make that safe)."""
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)")
"""A string value that is a point in time (sent as a timestamp): a date-time with its
offset, ``2026-11-01T09:30:00Z``."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="load events and traits (JSON lines) into a server")
    p.add_argument("file", metavar="EVENTS.jsonl",
                   help='one event a line: {"user_id": ..., "event_type": ..., optionally '
                        '"properties", "traits", "timestamp", "item_id", "event_id"}')
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of a server")
    p.add_argument("--batch-size", type=int, default=BATCH,
                   help=f"events per TrackEventBatch call (1-1000, default {BATCH})")
    p.add_argument("--retries", type=int, default=5,
                   help="sends of an event after a transient failure, with backoff")
    add_client_arguments(p)
    p.set_defaults(func=run)


BATCH = 500
"""Events per TrackEventBatch call from ``arbiter track``."""


class Stopped(Exception):
    """Events failed for a transient reason after every retry (or the server refused
    the call itself): the run stops there."""


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

    if not 1 <= args.batch_size <= 1000 or args.retries < 0:
        print("arbiter track: --batch-size must be 1 to 1000, --retries at least 0",
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
    tally, done, stopped = Tally(), 0, ""
    with open_channel(args) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        try:
            for chunk in calls(event_lines(path, digest), args.batch_size):
                send_chunk(stub, chunk, args.retries, path, tally)
                done += len(chunk)
                print(f"\rtracked {done:,}/{total:,}", end="", file=sys.stderr, flush=True)
        except Stopped as err:
            stopped = str(err)
    print(file=sys.stderr)
    for refusal in tally.refused:
        print(refusal, file=sys.stderr)
    if stopped:
        print(f"arbiter track: stopped at {stopped}; run it again to go on (what was "
              "applied answers as already applied)", file=sys.stderr)
    print(f"arbiter track: {tally.line()}", file=sys.stderr)
    return 1 if tally.refused or stopped else 0


def send_chunk(stub: Any, chunk: list[tuple[int, Any]], retries: int, path: Path,
               tally: Tally) -> None:
    """One TrackEventBatch call for ``chunk`` (line numbers and requests); what failed
    for a transient reason (the call, or events answered UNAVAILABLE) is sent again with
    backoff under the same ids, until ``retries`` runs out (Stopped). A refused event is
    counted in ``tally``; a call refused as a whole (a missing scope, say) is Stopped."""
    import grpc

    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb

    pending, attempt = chunk, 0
    while True:
        try:
            response = stub.TrackEventBatch(
                pb.TrackEventBatchRequest(events=[request for _, request in pending]),
                timeout=60)
        except grpc.RpcError as err:
            code = err.code()
            if code.name not in RETRIED:
                raise Stopped(f"{path}:{pending[0][0]}: {code.name}: {err.details()}"
                              ) from None
            failure = f"{code.name}: {err.details()}"
        else:
            again = []
            for (number, request), result in zip(pending, response.results, strict=True):
                if result.status in RETRIED:
                    again.append((number, request))
                    failure = f"{result.status}: {result.error}"
                elif result.status:
                    tally.refused.append(f"{path}:{number}: {result.status}: {result.error}")
                elif result.duplicate:
                    tally.duplicates += 1
                else:
                    tally.applied += 1
            if not again:
                return
            pending = again
        if attempt == retries:
            raise Stopped(f"{path}:{pending[0][0]}: {failure} (after {attempt + 1} "
                          "attempts)")
        time.sleep(min(5.0, 0.1 * 2 ** attempt))
        attempt += 1


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
        maps: dict[str, dict[str, Any]] = {}
        for key in ("properties", "traits"):
            value = item.get(key) or {}
            if not isinstance(value, dict):
                raise ValueError(where.format(key_column(line, key))
                                 + f": {key}: not a JSON object")
            for name, v in value.items():
                if v is None and key == "properties":  # (a trait's null removes it)
                    raise ValueError(where.format(key_column(line, name))
                                     + f": {key}.{name}: null (leave it out instead)")
            maps[key] = {}
            for name, v in value.items():
                try:
                    maps[key][name] = convert.to_value(_value(v))
                except ValueError as err:  # a list or map holding more than strings
                    raise ValueError(where.format(key_column(line, name))
                                     + f": {key}.{name}: {err}") from None
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
    if not -62_135_596_800 <= value <= 253_402_300_799:  # (NaN fails it too)
        raise ValueError("must be a time from 0001-01-01 to 9999-12-31 (epoch seconds)")
    return float(value)

