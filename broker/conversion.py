"""Publication payloads in every encoding, checked when they are published.

Subscribers of one channel may use different encodings, so a payload must be representable in
both. Each encoding can carry something the other cannot: MessagePack has binary map keys and
nil keys, JSON has integers beyond 64 bits. Converting once, when the publisher sends it, turns
that into a clear ``bad_request`` for the publisher, instead of a publication that some
subscribers would never receive. It costs one conversion per publication, never one per
subscriber, and the converted payload is kept (``PublicationFrames.add_payload``).

MessagePack data published must therefore use string map keys only (``{1: "a"}`` and
``{1: "a", "1": "b"}`` would reach JSON subscribers changed or ambiguous); binary values become
base64 strings and MessagePack timestamps ISO 8601 strings for JSON subscribers; NaN and
infinity, which JSON cannot express (msgspec would write ``null``), are refused.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from protocol import CODECS, JSON, MSGPACK, Codec, Encoding


class UnconvertibleData(ValueError):
    """A payload that one of the encodings cannot carry; its message is for the client."""


def convert_for_subscribers(data: msgspec.Raw, source: Codec) -> dict[Encoding, msgspec.Raw]:
    """``data`` in every encoding other than ``source``'s. Raises ``UnconvertibleData``."""
    if source is JSON:
        # Nearly every publish: the loop below, unrolled for its one target (a third of the
        # time; the decoding and encoding themselves are two C calls).
        try:
            value = JSON.decode_payload(data)
        except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
            raise UnconvertibleData(f"data cannot be decoded: {exc}") from None
        try:
            return {Encoding.MSGPACK: MSGPACK.encode_payload(value)}
        except (msgspec.MsgspecError, TypeError, ValueError, OverflowError) as exc:
            raise UnconvertibleData(f"data cannot be carried in MessagePack: {exc}") from None
    try:
        value = source.decode_payload(data)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise UnconvertibleData(f"data cannot be decoded: {exc}") from None
    if source is MSGPACK:
        problem = _json_problem(value)
        if problem is not None:
            raise UnconvertibleData(f"data cannot be carried in JSON: {problem}")
    converted: dict[Encoding, msgspec.Raw] = {}
    for encoding, target in CODECS.items():
        if target is source:
            continue
        try:
            converted[encoding] = target.encode_payload(value)
        except (msgspec.MsgspecError, TypeError, ValueError, OverflowError) as exc:
            name = "JSON" if encoding is Encoding.JSON else "MessagePack"
            raise UnconvertibleData(f"data cannot be carried in {name}: {exc}") from None
    return converted


def _json_problem(value: Any) -> str | None:
    """What in ``value`` JSON cannot carry unchanged, or None (RFC 8259)."""
    # Iterative, so that hostile nesting cannot exhaust the stack.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return "map keys must be strings"
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "NaN and infinity have no JSON form"
    return None
