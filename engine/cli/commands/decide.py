"""``arbiter decide`` (in process or from a server) and ``arbiter explain``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dsl.diagnostics import RulesetError
from dsl.loader import load_path
from engine.cli.client import add_client_arguments, open_channel
from engine.cli.common import (
    add_request_arguments,
    calls,
    decide_time,
    default_rules,
    json_lines,
    key_column,
    memory_store_factory,
    parse_context,
)
from engine.decide.decision import Decision
from engine.requests import InvalidArgument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decide", help="one decision, in process or from a server")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rules", default=default_rules(), help="decide in process")
    where.add_argument("--target", help="host:port of a running server")
    add_request_arguments(p, user_required=False, default_user=None)
    p.add_argument("--batch", metavar="USERS.jsonl",
                   help="decide for every line ({\"user_id\": ..., \"context\": {...}}) "
                        "through DecideBatch; needs --target and --out")
    p.add_argument("--out", metavar="DECISIONS.jsonl", help="with --batch: one line each")
    p.add_argument("--record-impressions", action="store_true",
                   help="with --batch: count each first action as shown (caps apply next)")
    p.add_argument("--request-id", metavar="ID",
                   help="with --target: the Decide's request_id (sent again with the same "
                        "id, it is answered with the first decision, not a new one)")
    p.add_argument("--run-id", metavar="ID",
                   help="with --batch --record-impressions: each line's request_id is "
                        "ID:N (N its place in the file), so a call sent again, in this "
                        "run or with --resume, records each send once; default: a new "
                        "random id, printed if the run stops")
    p.add_argument("--resume", action="store_true",
                   help="with --batch: go on after a run that stopped, from the first user "
                        "whose decision is not in --out yet (it is appended to)")
    p.add_argument("--explain", action="store_true", help="why each action was chosen")
    p.add_argument("--profile", help="JSON profile file to decide for (in process)")
    p.add_argument("--json", action="store_true", help="print the DecideResponse as JSON")
    add_client_arguments(p)
    p.set_defaults(func=run)

    e = sub.add_parser("explain", help="why each action is or is not chosen")
    e.add_argument("rules", help="ruleset directory")
    e.add_argument("--profile", help="profile file (JSON or TOML); none: a new customer")
    e.add_argument("--population", metavar="FILE.jsonl",
                   help="other customers' events to learn from first (clusters, scores, "
                        "recommendations, percentiles), as in arbiter test")
    add_request_arguments(e, user_required=False, default_seed=0)
    e.set_defaults(func=run, explain=True, target=None, json=False)  # a local explained decide


def run(args: argparse.Namespace) -> int:
    if getattr(args, "batch", None):
        return run_batch(args)
    if not args.user:
        print(f"arbiter {args.command}: --user is required", file=sys.stderr)
        return 2
    if getattr(args, "request_id", None) and not args.target:
        print(f"arbiter {args.command}: --request-id needs --target (a server keeps the "
              "answer)", file=sys.stderr)
        return 2
    try:
        decision = _decide_remote(args) if args.target else _decide_local(args)
    except RulesetError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except InvalidArgument as err:
        print(f"arbiter {args.command}: invalid argument {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # unreadable or malformed --profile file
        print(f"arbiter {args.command}: {err}", file=sys.stderr)
        return 2
    if args.json:
        from google.protobuf.json_format import MessageToJson

        from engine.grpc.convert import decide_response

        print(MessageToJson(decide_response(decision)))
    else:
        print(decision.render())
    return 0


def _decide_local(args: argparse.Namespace) -> Decision:
    import time
    from pathlib import Path

    from engine.cli.scenario import apply_population, apply_scenario, load_scenario
    from engine.service import Arbiter

    ruleset = load_path(args.rules)
    at = decide_time(args.at)  # (the profile file's "ago"s count back from it too)
    clock = time.time if at is None else (lambda: at)
    arbiter = Arbiter(ruleset, memory_store_factory()(clock), seed=args.seed, clock=clock)
    if getattr(args, "population", None):
        apply_population(arbiter, Path(args.population), arbiter.clock())
    if args.profile:
        apply_scenario(arbiter, args.user, load_scenario(args.profile), arbiter.clock(),
                       args.placement, args.channel or "")
    return arbiter.decide(
        user_id=args.user, placement=args.placement, channel=args.channel,
        context=parse_context(args.context, ruleset.context_schema), limit=args.limit,
        explain=args.explain)


def _decide_remote(args: argparse.Namespace) -> Decision:
    import grpc

    from engine.grpc import convert
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    context = {k: convert.to_value(v) for k, v in parse_context(args.context).items()}
    request = pb.DecideRequest(
        user_id=args.user, placement=args.placement, channel=args.channel,
        context=context, limit=args.limit, explain=args.explain,
        request_id=args.request_id or "")
    at = decide_time(args.at)
    if at is not None:
        request.at.CopyFrom(convert.timestamp(at))
    with open_channel(args) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        try:
            response = stub.Decide(request, timeout=10)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("request", err.details() or "") from err
            raise SystemExit(f"arbiter decide: {err.code().name}: {err.details()}") from err
    if response.duplicate:
        print(f"(the decision kept for request_id {args.request_id}, given again)",
              file=sys.stderr)
    return convert.decision_from_response(response, args.user, args.placement, args.channel)


BATCH = 500
"""Requests per DecideBatch call from ``arbiter decide --batch``."""


def run_batch(args: argparse.Namespace) -> int:
    """Every line of ``--batch`` decided through DecideBatch, written to ``--out``.

    The file is read twice, a line at a time (memory stays flat however many customers
    it lists): once to check every line (a line that is not a JSON object stops the run
    before anything is decided, naming file:line:col), once to decide them in order.
    A call the server could not take (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``: nothing
    decided) is sent again with backoff, and so are decisions the store could not serve
    (degraded, or ``UNAVAILABLE``: nothing recorded); the requests an answer had no room
    for (their results ``RESOURCE_EXHAUSTED``, nothing decided: large content) at once;
    any other failure, or a store still away after the retries, stops the run after the
    decisions written so far, saying how to go on (``--resume``): a degraded decision is
    never written as the customer's. With
    ``--record-impressions`` each request carries a ``request_id`` (the run's id and the
    user's place in the file), so a call whose answer was lost (``DEADLINE_EXCEEDED``)
    and a request answered ``ABORTED`` (its first call still deciding) are sent again
    too: a retry gets the first answer and counts the send once.
    """
    import uuid

    from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc

    if not (args.target and args.out):
        print("arbiter decide: --batch needs --target and --out", file=sys.stderr)
        return 2
    path, out_path = Path(args.batch), Path(args.out)
    try:
        at = decide_time(args.at)  # (every line's)
        total = sum(1 for _ in batch_users(path))
        done = completed_lines(out_path) if args.resume else 0
    except (OSError, ValueError) as err:  # (InvalidArgument is a ValueError)
        print(f"arbiter decide: {err}", file=sys.stderr)
        return 2
    users = itertools.islice(batch_users(path), done, None)
    run_id = (args.run_id or uuid.uuid4().hex[:16]) if args.record_impressions else ""
    requests = ((item, _decide_request(args, item, f"{run_id}:{done + n + 1}" if run_id
                                       else "", at)) for n, item in enumerate(users))
    try:  # (a folder, or one that does not exist: one line, before anything is decided)
        out = out_path.open("a" if args.resume else "w")
    except OSError as err:
        print(f"arbiter decide: --out {out_path}: {err.strerror or err}", file=sys.stderr)
        return 2
    refused, first_refusal = 0, ""
    with open_channel(args) as channel, out:
        stub = pb_grpc.DecisionServiceStub(channel)
        for call in calls(requests, BATCH):  # (and under the server's message limit)
            chunk = [item for item, _ in call]
            try:
                response = _decide_chunk(stub, args, [request for _, request in call])
                stopped = None
            except _BatchStopped as err:
                response, stopped = None, str(err)
            final = [] if response is None else list(response.results)
            flag = next((r.error for r in final if _refused_for_a_flag(r)), None)
            if flag is not None:  # the same for every line: nothing to write
                print(f"\narbiter decide: --{flag}", file=sys.stderr)
                return 2
            # a decision the store could not serve after every retry (degraded: an unknown
            # customer's, nothing recorded) is not written as if it were the customer's: the
            # run stops before it, and --resume decides it again
            kept = next((k for k, result in enumerate(final) if _undecided(result)), len(final))
            if kept < len(final):
                first = final[kept]
                stopped = (f"{first.status}: {first.error}" if first.status else
                           "degraded: the profile store did not answer (decisions made as "
                           "for unknown customers, nothing recorded)")
            out.write("".join(json.dumps(_batch_line(item, result)) + "\n"
                              for item, result in zip(chunk[:kept], final[:kept], strict=True)))
            out.flush()
            done += kept
            for result in final[:kept]:
                if result.error and not result.decision.decision_id:
                    refused += 1
                    first_refusal = first_refusal or result.error
            if stopped is not None:
                again = f" --run-id {run_id}" if run_id and not args.run_id else ""
                print(f"\narbiter decide: stopped after {done:,} of {total:,} users: "
                      f"{stopped}. {out_path} holds the first {done:,} decisions; run the "
                      f"same command with --resume{again} to go on", file=sys.stderr)
                return 1
            print(f"\rdecided {done:,}/{total:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if refused:
        print(f"arbiter decide: {refused:,} of {total:,} users refused (their lines in "
              f"{out_path} hold the error; the first: {first_refusal})", file=sys.stderr)
        return 1
    return 0


FLAG_FIELDS = ("placement", "channel", "limit")
"""A DecideRequest's fields that ``arbiter decide --batch`` fills from its flags."""


def _refused_for_a_flag(result: Any) -> bool:
    """Refused for a field every line has from the command's flags (``--channel``
    missing for a placement with two): every other line would be too."""
    return (result.status == "INVALID_ARGUMENT"
            and result.error.partition(":")[0] in FLAG_FIELDS)


class _BatchStopped(Exception):
    """A DecideBatch call failed in a way a retry cannot mend."""


SENT_AGAIN = frozenset({"ABORTED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})
"""A DecideBatch result's statuses that mean "not decided yet, send it again": a request
whose first call is still deciding it, one past what the answer could carry, one whose
store did not answer (nothing recorded)."""


def _undecided(result: Any) -> bool:
    """Not this customer's decision yet: a status of :data:`SENT_AGAIN`, or a decision
    the store could not serve (degraded: made as for an unknown customer and not
    recorded, so deciding it again is safe)."""
    return result.status in SENT_AGAIN or (not result.error and result.decision.degraded)
BATCH_RETRIES = 8
"""Sends of a DecideBatch call the server could not take, with backoff (0.2 s doubling to
5 s: ~21 s in all, longer than a claim left by a server that stopped is held)."""


def _decide_request(args: argparse.Namespace, item: dict[str, Any], request_id: str,
                    at: float | None) -> Any:
    """The DecideRequest of a line of ``--batch`` (``at``: the ``--at`` time, if any)."""
    from engine.grpc import convert
    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb

    request = pb.DecideRequest(
        user_id=str(item.get("user_id", "")), placement=args.placement,
        channel=args.channel, limit=args.limit, request_id=request_id,
        context={k: convert.to_value(v) for k, v in (item.get("context") or {}).items()})
    if at is not None:
        request.at.CopyFrom(convert.timestamp(at))
    return request


def _decide_chunk(stub: Any, args: argparse.Namespace, requests: list[Any]) -> Any:
    """One DecideBatch call for ``requests``, sent again while it fails for a reason a
    retry mends; with request ids a request answered ``ABORTED`` is sent again on its
    own, and so is one the answer had no room for."""
    import time

    import grpc

    from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb

    request = pb.DecideBatchRequest(record_impressions=args.record_impressions,
                                    requests=requests)
    retried = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    if any(r.request_id for r in requests):  # a lost answer is safe to ask for again:
        # the first is kept under its id
        retried |= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
    response = pb.DecideBatchResponse(results=[pb.DecideBatchResult()] * len(requests))
    pending = list(range(len(requests)))  # the requests without a final answer yet
    attempt = 0
    while True:
        call = pb.DecideBatchRequest(record_impressions=request.record_impressions,
                                     requests=[request.requests[i] for i in pending])
        try:
            answer = stub.DecideBatch(call, timeout=120)
        except grpc.RpcError as err:
            # nothing was decided, or what was is kept: send it again; anything else may
            # have recorded some
            if err.code() in retried and attempt < BATCH_RETRIES:
                time.sleep(min(5.0, 0.2 * 2 ** attempt))
                attempt += 1
                continue
            raise _BatchStopped(f"{err.code().name}: {err.details()}") from None
        for i, result in zip(pending, answer.results, strict=True):
            response.results[i].CopyFrom(result)
        left = [i for i in pending if _undecided(response.results[i])]
        # past the answer's size the rest were not decided: at once, while each call
        # answers some (big content: a few hundred a call)
        if left and len(left) < len(pending) and any(
                response.results[i].status == "RESOURCE_EXHAUSTED" for i in left):
            pending = left
            continue
        pending = left
        if not pending or attempt == BATCH_RETRIES:
            return response
        time.sleep(min(5.0, 0.2 * 2 ** attempt))
        attempt += 1


def completed_lines(out: Path) -> int:
    """The complete lines of an earlier run's ``--out`` (a line cut short when that run
    was killed is dropped from the file: its user is decided again).

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "decisions.jsonl"
    >>> _ = out.write_text('{"user_id": "ann"}\\n{"user_id": "bo')
    >>> completed_lines(out), out.read_text()
    (1, '{"user_id": "ann"}\\n')
    >>> completed_lines(out.with_name("none.jsonl"))
    0
    """
    try:
        file = out.open("r+b")
    except FileNotFoundError:
        return 0
    with file:  # a megabyte at a time: memory stays flat however long the file
        lines = end = position = 0
        while block := file.read(1 << 20):
            if (count := block.count(b"\n")):
                lines += count
                end = position + block.rfind(b"\n") + 1
            position += len(block)
        if end < position:
            file.truncate(end)
    return lines


def batch_users(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file, one line at a time, blank lines skipped; raises
    ValueError naming ``path:line:col`` for a line that is not a JSON object, has a key
    it does not read, no ``user_id`` string, or a ``context`` that is not an object.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write('{"user_id": "ann"}\\n\\n{"user_id": "bob", oops}\\n')
    >>> list(batch_users(Path(f.name)))
    Traceback (most recent call last):
    ValueError: ...jsonl:3:20: not JSON (Expecting property name enclosed in double quotes)
    """
    from engine.grpc import convert

    for number, line, item in json_lines(path):
        where = f"{path}:{number}:{{}}"
        for key in item:
            if key not in BATCH_LINE_KEYS:  # never a silently ignored "placement"
                raise ValueError(
                    where.format(key_column(line, key)) + f": {key}: not read; a line has "
                    "user_id and, optionally, context (the placement and channel are "
                    "--placement and --channel)")
        user = item.get("user_id")
        if not isinstance(user, str) or not user:
            raise ValueError(where.format(key_column(line, "user_id"))
                             + ": user_id: must be a non-empty string")
        context = item.get("context") or {}
        if not isinstance(context, dict):
            raise ValueError(where.format(key_column(line, "context"))
                             + ": context: not a JSON object")
        for name, value in context.items():
            try:
                convert.to_value(value)
            except ValueError as err:  # a list or map holding more than strings
                raise ValueError(where.format(key_column(line, name))
                                 + f": context.{name}: {err}") from None
        yield item


BATCH_LINE_KEYS = frozenset({"user_id", "context"})
"""The keys a line of ``arbiter decide --batch`` may have."""



def _batch_line(item: dict[str, Any], result: Any) -> dict[str, Any]:
    if result.error:
        return {"user_id": item.get("user_id"), "error": result.error}
    d = result.decision
    return {"user_id": item.get("user_id"), "decision_id": d.decision_id,
            "actions": [{"action_id": a.action_id, "rank": a.rank, "score": a.score,
                         "content": dict(a.content)} for a in d.actions]}
