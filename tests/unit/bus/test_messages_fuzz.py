"""Arbitrary and mutated bytes into every decoder: only the protocol's own errors come out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.errors import ProtocolError
from bus.protocol import decode_message, peek_header
from bus.protocol.frame import FLAG_ZSTD, pack_frame, unpack_frame
from bus.protocol.tensors import read_tensors
from tests.unit.bus.protocol_samples import samples

VALID = [data for compress in (False, True) for data in samples(compress).values()]
DECODERS: list[Callable[[bytes], object]] = [
    decode_message,
    peek_header,
    lambda data: read_tensors(memoryview(data)),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_protocol_errors(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _only_protocol_errors(data)


@FUZZ
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_after_a_valid_prefix(data: bytes) -> None:
    _only_protocol_errors(b"FLRN\x01\x00\x00\x00" + len(data).to_bytes(4, "little") + data)
    _only_protocol_errors(len(data).to_bytes(8, "little") + data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del data[position:]
        else:
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_mutated_valid_messages(data: bytes) -> None:
    _only_protocol_errors(data)


@pytest.mark.parametrize("data", VALID)
def test_every_truncation_of_a_valid_message_is_refused(data: bytes) -> None:
    for end in range(len(data) - 1, -1, -max(1, len(data) // 97)):
        with pytest.raises(ProtocolError):
            decode_message(data[:end])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    frame = unpack_frame(data)
    header: dict[str, Any] = json.loads(bytes(frame.header))
    return header, bytes(frame.payload)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document that a value could be swapped in."""
    found = [prefix] if prefix else []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, item in items:
        found += _paths(item, (*prefix, key))
    return found


@FUZZ
@given(data=st.data())
def test_valid_frames_with_one_header_value_swapped(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(VALID))
    header, payload = _split(original)
    path = data.draw(st.sampled_from(_paths(header)))
    target = header
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(json_values)
    elif isinstance(target, dict):
        del target[path[-1]]
    raw = json.dumps(header).encode()
    _only_protocol_errors(pack_frame(raw, payload, compressed=bool(original[5] & FLAG_ZSTD)))


@FUZZ
@given(
    header=st.fixed_dictionaries(
        {
            "schema": st.just(1),
            "kind": st.sampled_from(["update", "data", "status", "round", "release", "command"]),
        },
        optional={
            name: json_values
            for name in (
                "id",
                "fleet",
                "device_id",
                "payload",
                "payload_ref",
                "tensors",
                "codec",
                "files",
                "training",
                "sampling",
                "args",
                "created_at",
                "online",
            )
        },
    ),
    payload=st.binary(max_size=64),
    compressed=st.booleans(),
)
def test_arbitrary_json_headers(header: dict[str, Any], payload: bytes, compressed: bool) -> None:
    _only_protocol_errors(pack_frame(json.dumps(header).encode(), payload, compressed=compressed))
