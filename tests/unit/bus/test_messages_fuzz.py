"""Arbitrary and mutated bytes into every decoder: only the protocol's own errors come out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.errors import ProtocolError
from bus.protocol import decode_message, peek_header
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
