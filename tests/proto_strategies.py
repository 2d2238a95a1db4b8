"""Hypothesis strategies for any protobuf request message, built from its descriptor.

Every field gets valid, boundary and hostile values: empty and huge strings, NUL,
non-ASCII, NaN and infinities, integer extremes, unknown enum numbers, timestamps
outside what ``google.protobuf.Timestamp`` allows, maps just over Arbiter's 64-entry
limit, and (as raw bytes) invalid UTF-8 such as encoded surrogates. Used by the API
fuzz tests and ``make fuzz``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1),
    F.TYPE_SFIXED32: (-2**31, 2**31 - 1), F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
    F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
NAMES = ["u", "ann", "homepage_banner", "email", "cart_page", "web", "app", "visit",
         "purchase", "add_to_cart", "hero_test", "cart_value", "page", "tier", "value",
         "email_opt_in", "consents", "onboarding_tour", "cart_discount"]
TEXT = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(["", " ", "\x00", "a\x00b", "é", "🙂", "x" * 257, "y" * 4097, "..",
                     "a:b|c", "{{ x }}", "%s%n", "\u202e", "\ufeff"]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
            min_size=300, max_size=600),
)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]))
TIMESTAMP_SECONDS = st.one_of(
    st.integers(-2**63, 2**63 - 1),
    st.sampled_from([-62_135_596_801, -62_135_596_800, 0, 1_767_614_400, 253_402_300_799,
                     253_402_300_800, 2**62]),
    st.integers(1_600_000_000, 1_900_000_000))


PLAUSIBLE = {
    "placement": ["homepage_banner", "email", "cart_page"],
    "channel": ["web", "email", "app", ""],
    "event_type": ["visit", "purchase", "add_to_cart", "content_view", "page_view"],
    "experiment": ["hero_test"],
    "user_id": ["ann", "bob", "cy", "dee"],
    # a few ids, so that retries, replays and reused ids (another request) are reached
    "request_id": ["send-1", "send-2"],
    "event_id": ["evt-1", "evt-2"],
}
"""Field name -> what a correct client sends there (the retail ruleset's names)."""


def _plausible(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Values a correct client would send, so the fuzzer also reaches deep paths."""
    t = field.type
    if t == F.TYPE_STRING:
        return st.sampled_from(PLAUSIBLE.get(field.name, NAMES))
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(0, 1000)
    if t in INT_RANGES:
        return st.integers(0, 5)
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return _scalar(field, hostile=True)


def _scalar(field: FieldDescriptor, hostile: bool = True) -> st.SearchStrategy[Any]:
    if not hostile:
        return _plausible(field)
    t = field.type
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return FLOATS if t == F.TYPE_DOUBLE else st.floats(width=32, allow_nan=True)
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, -1 if lo else 0]))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return TEXT
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_ENUM:  # open enums: unknown numbers are legal on the wire
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-2**31, 2**31 - 1))
    raise TypeError(f"no strategy for field type {t}")


def _timestamp(draw: st.DrawFn, message: Message, hostile: bool) -> None:
    if not hostile:
        message.seconds = draw(st.integers(1_760_000_000, 1_767_000_000))  # type: ignore[attr-defined]
        return
    message.seconds = draw(TIMESTAMP_SECONDS)  # type: ignore[attr-defined]
    message.nanos = draw(st.one_of(st.integers(0, 999_999_999),  # type: ignore[attr-defined]
                                   st.sampled_from([-1, 1_000_000_000, -2**31, 2**31 - 1])))


def _size(draw: st.DrawFn, hostile: bool) -> int:
    if not hostile:
        return draw(st.sampled_from([0, 0, 0, 1, 2]))
    return draw(st.one_of(st.integers(0, 3), st.sampled_from([64, 65, 70])))


def _set(draw: st.DrawFn, field: FieldDescriptor, hostile: bool) -> bool:
    """Whether to set a field: half the time when hostile; a plausible request sets its
    scalars and maps and now and then an optional message (a timestamp, say)."""
    if hostile:
        return draw(st.booleans())
    if field.message_type is not None and not field.is_repeated:
        return draw(st.integers(0, 3)) == 0
    return True


def _fill(draw: st.DrawFn, message: Message, depth: int, hostile: bool) -> None:
    descriptor: Descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        _timestamp(draw, message, hostile)
        return
    chosen_oneofs = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
                     for o in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen_oneofs[oneof.name] != field.name:
            continue
        if oneof is None and not _set(draw, field, hostile):
            continue  # leave unset (the default)
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for _ in range(_size(draw, hostile)):
                key = draw(_scalar(key_field, hostile))
                if value_field.message_type is not None:
                    if depth > 0:
                        _fill(draw, target[key], depth - 1, hostile)
                else:
                    target[key] = draw(_scalar(value_field, hostile))
            continue
        if field.is_repeated:
            count = draw(st.integers(0, 3)) if depth < 2 else _size(draw, hostile)
            for _ in range(count):
                if field.message_type is not None:
                    if depth > 0:
                        _fill(draw, target.add(), depth - 1, hostile)
                else:
                    target.append(draw(_scalar(field, hostile)))
            continue
        if field.message_type is not None:
            if depth > 0:
                _fill(draw, target, depth - 1, hostile)
                if not target.ListFields():  # mark presence even when empty
                    target.SetInParent()
            continue
        setattr(message, field.name, draw(_scalar(field, hostile)))


@st.composite
def messages(draw: st.DrawFn, message_class: type[Message], depth: int = 3) -> Message:
    """A message of ``message_class``: half the time with plausible values throughout (a
    correct client, to reach the deep paths), half with valid, boundary and hostile ones."""
    message = message_class()
    _fill(draw, message, depth, hostile=draw(st.booleans()))
    return message


INVALID_UTF8 = [b"\xed\xa0\x80", b"\xff", b"\xc0\xaf", b"\xf4\x90\x80\x80"]


@st.composite
def wire_bytes(draw: st.DrawFn, message_class: type[Message]) -> bytes:
    """Bytes on the wire: a serialized message, or one mutated (a string field's bytes
    replaced by invalid UTF-8, bytes flipped, cut or appended), or pure noise."""
    kind = draw(st.sampled_from(["message", "utf8", "flip", "cut", "noise"]))
    if kind == "noise":
        return draw(st.binary(min_size=1, max_size=128))
    data = bytearray(draw(messages(message_class)).SerializeToString())
    if kind == "utf8":  # field 1 as a length-delimited string of invalid UTF-8
        bad = draw(st.sampled_from(INVALID_UTF8))
        return bytes([0x0A, len(bad)]) + bad + bytes(data)
    if kind == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    elif kind == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return bytes(data)
