"""``arbiter decide`` (in process or from a server) and ``arbiter explain``."""

from __future__ import annotations

import argparse
import sys

from dsl.diagnostics import RulesetError
from dsl.loader import load_path
from engine.cli.common import (
    add_request_arguments,
    default_rules,
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
    add_request_arguments(p, user_required=True)
    p.add_argument("--explain", action="store_true", help="why each action was chosen")
    p.add_argument("--profile", help="JSON profile file to decide for (in process)")
    p.add_argument("--json", action="store_true", help="print the DecideResponse as JSON")
    p.set_defaults(func=run)

    e = sub.add_parser("explain", help="why each action is or is not chosen")
    e.add_argument("rules", help="ruleset directory")
    e.add_argument("--profile", help="profile file (JSON or TOML); none: a new customer")
    add_request_arguments(e, user_required=False, default_seed=0)
    e.set_defaults(func=run, explain=True, target=None, json=False)  # a local explained decide


def run(args: argparse.Namespace) -> int:
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

    from engine.cli.scenario import apply_scenario, load_scenario
    from engine.service import Arbiter

    ruleset = load_path(args.rules)
    arbiter = Arbiter(ruleset, memory_store_factory()(time.time), seed=args.seed)
    if args.profile:
        apply_scenario(arbiter, args.user, load_scenario(args.profile), arbiter.clock())
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
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        try:
            response = stub.Decide(pb.DecideRequest(
                user_id=args.user, placement=args.placement, channel=args.channel,
                context=context, limit=args.limit, explain=args.explain), timeout=10)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("request", err.details() or "") from err
            raise SystemExit(f"arbiter decide: {err.code().name}: {err.details()}") from err
    return convert.decision_from_response(response, args.user, args.placement, args.channel)
