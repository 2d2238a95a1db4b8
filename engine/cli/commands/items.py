"""``arbiter items``: check a catalogue file, or upsert and remove items on a running server.

``arbiter items check items.jsonl --rules DIR`` checks a file against the ruleset's items
block (positioned errors); ``arbiter items upsert items.jsonl`` and ``arbiter items remove
ID...`` change the catalogue every replica serves (CatalogueService, scope ``admin``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dsl.catalogue import load_catalogue
from dsl.diagnostics import RulesetError
from dsl.loader import load_path
from engine.cli.client import add_client_arguments, open_channel
from engine.cli.common import calls, default_rules

BATCH = 1000
"""Items per UpsertItems call (fewer when they would pass the server's request limit)."""
RETRIES = 5
"""Sends of a call the server could not take (UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED: an upsert or removal is safe to send again), with backoff."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("items", help="check a catalogue file; upsert or remove items on a server")
    p.add_argument("action", choices=("check", "upsert", "remove"))
    p.add_argument("args", nargs="+", metavar="FILE|ID",
                   help="a catalogue file (items.jsonl or .csv), or item ids to remove")
    p.add_argument("--rules", default=default_rules(), help="ruleset directory (for check)")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of a server")
    add_client_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "remove":
        return _remove(args)
    path = Path(args.args[0])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        print(f"arbiter items: cannot read {path}: {err}", file=sys.stderr)
        return 2
    if args.action == "check":
        return _check(args, path, text)
    return _upsert(args, path, text)


def _check(args: argparse.Namespace, path: Path, text: str) -> int:
    try:
        ruleset = load_path(args.rules)
    except (RulesetError, FileNotFoundError) as err:
        print(f"arbiter items: the ruleset does not load: {err}", file=sys.stderr)
        return 2
    items, diagnostics = load_catalogue(
        str(path), text, ruleset.item_schema if ruleset.items_declared else None)
    for d in diagnostics:
        print(d.render({str(path): text}), file=sys.stderr)
    print(f"{path}: {len(items)} item(s), {len(diagnostics)} error(s)")
    return 1 if diagnostics else 0


def _upsert(args: argparse.Namespace, path: Path, text: str) -> int:
    """Send the file's items in batches; each item's attributes as typed in the file
    (the server checks them against its serving ruleset)."""
    import json

    import grpc

    from dsl.catalogue import csv_rows, json_rows
    from engine.grpc import convert
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    if path.suffix == ".csv":
        try:
            ruleset = load_path(args.rules)
            schema = ruleset.item_schema
        except (RulesetError, FileNotFoundError):
            schema = {}
        rows = csv_rows(str(path), text, schema)
    else:
        rows = json_rows(str(path), text)
    messages = []
    for line, raw, _, problem in rows:
        if problem is not None:
            print(f"{path}:{line}: {problem}", file=sys.stderr)
            return 1
        try:
            attributes = {k: convert.to_value(v) for k, v in raw.items()
                          if k != "id" and v is not None}
        except ValueError as err:  # a list holding more than strings
            print(f"{path}:{line}: {err}", file=sys.stderr)
            return 1
        messages.append(pb.Item(id=str(raw.get("id", "")), attributes=attributes))
    stub = pb_grpc.CatalogueServiceStub(open_channel(args))
    answer = None
    for call in calls(enumerate(messages, 1), BATCH):  # (and under the request limit)
        try:
            answer = sent_again(stub.UpsertItems,
                           pb.UpsertItemsRequest(items=[item for _, item in call]))
        except grpc.RpcError as err:
            print(f"arbiter items: {err.code().name}: {err.details()} (in items "
                  f"{call[0][0]}-{call[-1][0]} of {path})", file=sys.stderr)
            return 1
    served = answer.items if answer is not None else 0
    print(json.dumps({"upserted": len(messages), "catalogue_items": served,
                      "version": answer.version if answer is not None else 0}))
    return 0


def _remove(args: argparse.Namespace) -> int:
    import grpc

    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    stub = pb_grpc.CatalogueServiceStub(open_channel(args))
    try:
        answer = sent_again(stub.RemoveItems, pb.RemoveItemsRequest(item_ids=args.args))
    except grpc.RpcError as err:
        print(f"arbiter items: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    missing = list(answer.not_found)
    print(f"removed {len(args.args) - len(missing)} item(s); the catalogue now has "
          f"{answer.items}" + (f"; not in the catalogue (nothing removed): "
                               f"{', '.join(missing)}" if missing else ""))
    return 0  # (a removal is safe to repeat: ids already gone are no failure)


def sent_again(method: Any, request: Any) -> Any:
    """``method(request)``, sent again with backoff (0.2 s doubling) while the server
    cannot take it, :data:`RETRIES` times at most; raises the last error. For calls
    that are safe to repeat (a catalogue change, a read, a forget)."""
    import time

    import grpc

    again = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}
    for attempt in range(RETRIES + 1):
        try:
            return method(request, timeout=30)
        except grpc.RpcError as err:
            if err.code() not in again or attempt == RETRIES:
                raise
            time.sleep(min(5.0, 0.2 * 2 ** attempt))
    raise AssertionError("unreachable")
