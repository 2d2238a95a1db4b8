"""Decide's ``request_id``: a retried call gets its first answer again.

A Decide (or a DecideBatch item) whose response was lost, a timeout or a dropped
connection, may still have been decided and recorded, and with DecideBatch's
``record_impressions`` its impression counted: deciding again would count the send
twice toward caps and cooldowns. With a ``request_id`` the first call claims the id
(:meth:`engine.ports.DecideIO.claim_request`: the check and the claim are one step),
decides, and keeps its answer with the decision's record, as long as the decision takes
feedback; a later call with the id gets that answer again, marked ``duplicate``, and
records nothing. What is kept under an id (one byte of kind, a 16-byte digest of the
request, then for an answer the encoded ``DecideResponse``):

>>> request = pb.DecideRequest(user_id="ann", placement="email", request_id="run-7:1")
>>> fp = fingerprint(request)
>>> held = answer(fp, pb.DecideResponse(decision_id="d1"))
>>> replay(held, fp).decision_id, replay(held, fp).duplicate
('d1', True)
>>> replay(claim(fp), fp)
Traceback (most recent call last):
engine.requests.Aborted: request_id: the first call with this request_id is still being ...
>>> other = fingerprint(pb.DecideRequest(user_id="ann", placement="web", request_id="run-7:1"))
>>> replay(held, other)
Traceback (most recent call last):
engine.requests.FailedPrecondition: request_id: already used for another request of ...
"""

from __future__ import annotations

from hashlib import blake2b

from google.protobuf.message import DecodeError

from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.records import CorruptRecord
from engine.requests import Aborted, FailedPrecondition

PENDING, ANSWERED = b"P", b"A"
"""The first byte of what is kept: a claim (being decided), or an answer."""
DIGEST_BYTES = 16
HOLD_MARGIN_SECONDS = 1.0
HOLD_MAX_SECONDS = 10.0
"""A claim is held for the deciding call's time left (at most HOLD_MAX_SECONDS: deciding
a wave and storing it takes far less, each store wait bounded by the store's timeout),
plus HOLD_MARGIN_SECONDS: a call that stopped (its server gone) leaves a claim that
lapses then, and a retry decides again."""


def hold_seconds(time_left: float) -> float:
    """How long a claim is held, given the deciding call's time left.

    >>> hold_seconds(0.2), hold_seconds(120.0)
    (1.2, 11.0)
    """
    return min(max(0.0, time_left), HOLD_MAX_SECONDS) + HOLD_MARGIN_SECONDS


def fingerprint(request: pb.DecideRequest) -> bytes:
    """A digest of the request (its request_id aside): a retry must repeat it."""
    copy = pb.DecideRequest()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return blake2b(copy.SerializeToString(deterministic=True),
                   digest_size=DIGEST_BYTES).digest()


def claim(digest: bytes) -> bytes:
    """What a call keeps under the id while it decides."""
    return PENDING + digest


def answer(digest: bytes, response: pb.DecideResponse) -> bytes:
    """What a call keeps under the id once its decision is recorded."""
    return ANSWERED + digest + response.SerializeToString()


def replay(held: bytes, digest: bytes) -> pb.DecideResponse:
    """The answer kept for a request like this one, marked ``duplicate``; Aborted while
    the first call is still deciding; FailedPrecondition when the id came with another
    request; CorruptRecord when what is kept cannot be read."""
    kind, kept = held[:1], held[1:1 + DIGEST_BYTES]
    if kind not in (PENDING, ANSWERED) or len(kept) != DIGEST_BYTES:
        raise CorruptRecord("request_id", "answer", "not an answer this build keeps")
    if kept != digest:
        raise FailedPrecondition(
            "request_id: already used for another request of this customer (placement, "
            "channel, context, limit, explain or at differ); send a new request_id for a "
            "new request")
    if kind == PENDING:
        raise Aborted("request_id: the first call with this request_id is still being "
                      "decided; retry after a moment")
    try:
        response = pb.DecideResponse.FromString(held[1 + DIGEST_BYTES:])
    except DecodeError as err:
        raise CorruptRecord("request_id", "answer", str(err)) from None
    response.duplicate = True
    return response
