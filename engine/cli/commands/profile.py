"""``arbiter profile``: what a running server holds about a customer, and forgetting it.

``arbiter profile get USER`` prints GetProfile's answer as JSON (attributes, event
aggregates, contacts, item history, what was learnt); ``arbiter profile forget USER...``
(or ``--file ids.txt``, one id a line, ``-`` for standard input) sends ForgetProfile for
each: an erasure request handled from a terminal or a script, with the operators'
``profiles`` scope. A forget the server could not complete (``UNAVAILABLE``: the store
or a decision log out of reach) is sent again with backoff, as forgetting twice is
safe; if it still fails the run stops there (the others would fail alike), and exits 1
saying how many were not forgotten; an id refused as invalid is named and skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.cli.client import add_client_arguments, open_channel
from engine.cli.commands.items import sent_again


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="show or forget a customer's profile on a server")
    p.add_argument("action", choices=("get", "forget"))
    p.add_argument("users", nargs="*", metavar="USER", help="customer ids")
    p.add_argument("--file", metavar="FILE",
                   help="forget: the ids in FILE too, one a line ('-': standard input)")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of a server")
    add_client_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "get":
        if len(args.users) != 1 or args.file:
            print("arbiter profile get: one customer id", file=sys.stderr)
            return 2
        return _get(args, args.users[0])
    try:
        users = [*args.users, *(_ids(args.file) if args.file else ())]
    except (OSError, UnicodeDecodeError) as err:
        print(f"arbiter profile: cannot read {args.file}: {err}", file=sys.stderr)
        return 2
    if not users:
        print("arbiter profile forget: no customer id (give ids or --file)", file=sys.stderr)
        return 2
    return _forget(args, users)


def _ids(name: str) -> Iterator[str]:
    """The non-blank lines of ``name`` (``-``: standard input), stripped."""
    text = (sys.stdin.read() if name == "-"
            else Path(name).read_text(encoding="utf-8-sig"))
    return (line.strip() for line in text.splitlines() if line.strip())


def _get(args: argparse.Namespace, user: str) -> int:
    import grpc
    from google.protobuf.json_format import MessageToJson

    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    stub = pb_grpc.DecisionServiceStub(open_channel(args))
    try:
        answer: Any = sent_again(stub.GetProfile, pb.GetProfileRequest(user_id=user))
    except grpc.RpcError as err:
        print(f"arbiter profile: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if not answer.found:
        print(f"arbiter profile: no profile for {user!r} (no event or trait tracked, or "
              "forgotten)", file=sys.stderr)
        return 1
    print(MessageToJson(answer.profile, preserving_proto_field_name=True, indent=2,
                        ensure_ascii=False))
    return 0


def _forget(args: argparse.Namespace, users: list[str]) -> int:
    import grpc

    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    stub = pb_grpc.DecisionServiceStub(open_channel(args))
    ids = list(dict.fromkeys(users))  # (each once, in the order given)
    failed = 0
    for n, user in enumerate(ids):
        try:
            answer = sent_again(stub.ForgetProfile, pb.ForgetProfileRequest(user_id=user))
        except grpc.RpcError as err:
            failed += 1
            print(f"{user}: not forgotten: {err.code().name}: {err.details()}",
                  file=sys.stderr)
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                continue  # this id (empty, too long): the others may be fine
            failed += len(ids) - n - 1  # the server, its store or the token: all would
            break
        print(f"{user}: forgotten ({answer.deleted} stored record(s) deleted)"
              if answer.deleted else f"{user}: nothing was stored")
    if failed:
        print(f"arbiter profile: {failed} of {len(ids)} not forgotten; run the command "
              "again for them (forgetting twice is safe)", file=sys.stderr)
    return 1 if failed else 0
