"""The safetensors payload: every structural rule, zero-copy reads, and compatibility both ways."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bus.errors import FrameError, ValidationError
from bus.protocol import read_tensors, write_tensors
from bus.protocol.limits import Limits


def _payload(index: Any, data: bytes = b"", *, raw_index: bytes | None = None) -> memoryview:
    header = raw_index if raw_index is not None else json.dumps(index).encode()
    return memoryview(len(header).to_bytes(8, "little") + header + data)


def _entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_layout_of_a_written_payload() -> None:
    payload = write_tensors({"a": np.array([1, 2], dtype=np.int16)}, metadata={"k": "v"})
    size = int.from_bytes(payload[:8], "little")
    assert size % 8 == 0  # padded with spaces so the data starts 8-byte aligned
    index = json.loads(payload[8 : 8 + size])
    assert index == {"__metadata__": {"k": "v"}, "a": _entry("I16", [2], 0, 4)}
    assert payload[8 + size :] == b"\x01\x00\x02\x00"


def test_reads_are_zero_copy_views_in_index_order() -> None:
    buffer = bytearray(
        write_tensors({"z": np.ones(3, dtype=np.float32), "a": np.arange(4, dtype=np.int64)})
    )
    tensors = read_tensors(memoryview(buffer))
    assert list(tensors) == ["z", "a"]
    assert np.shares_memory(tensors["a"], np.frombuffer(buffer, dtype=np.uint8))
    assert tensors["a"].tolist() == [0, 1, 2, 3]


def test_every_supported_dtype_round_trips() -> None:
    values: dict[str, np.ndarray] = {
        code: np.array([[1, 0], [0, 1]], dtype=dtype)
        for code, dtype in [
            ("F64", np.float64),
            ("F32", np.float32),
            ("F16", np.float16),
            ("I64", np.int64),
            ("I32", np.int32),
            ("I16", np.int16),
            ("I8", np.int8),
            ("U8", np.uint8),
            ("BOOL", np.bool_),
        ]
    }
    read = read_tensors(memoryview(write_tensors(values)))
    for code, value in values.items():
        assert read[code].dtype == value.dtype
        np.testing.assert_array_equal(read[code], value)


def test_unsupported_dtypes_are_refused_clearly() -> None:
    with pytest.raises(ValidationError, match="supported: F64, F32"):
        write_tensors({"c": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(ValidationError, match="unsupported dtype 'BF16'") as caught:
        read_tensors(_payload({"b": _entry("BF16", [1], 0, 2)}, b"\0\0"))
    assert caught.value.where == "payload.tensors['b'].dtype"


F4 = b"\0" * 4


@pytest.mark.parametrize(
    ("index", "data", "where", "words"),
    [
        ({"a": _entry("F32", [-1], 0, 4)}, F4, "payload.tensors['a'].shape", "non-negative"),
        ({"a": _entry("F32", [1.0], 0, 4)}, F4, "payload.tensors['a'].shape", "integers"),
        ({"a": _entry("F32", [True], 0, 4)}, F4, "payload.tensors['a'].shape", "integers"),
        ({"a": _entry("F32", [1] * 9, 0, 4)}, F4, "payload.tensors['a'].shape", "at most 8"),
        ({"a": _entry("F32", [0, 2**60], 0, 0)}, b"", "payload.tensors['a'].shape", "2**53"),
        ({"a": _entry("F32", [2], 0, 4)}, F4, "payload.tensors['a'].data_offsets", "needs 8"),
        ({"a": _entry("F32", [1], 4, 0)}, F4, "payload.tensors['a'].data_offsets", "begin <= end"),
        ({"a": _entry("F32", [1], 0, 4)}, F4 + b"x", "payload.data", "cover 4 of 5"),
        ({"a": _entry("F32", [1], 4, 8)}, F4 * 2, "payload.tensors['a'].data_offsets", "gap"),
        ({"a": _entry("F32", [1], 0, 4)}, b"", "payload.data", "cover 4 of 0"),
        (
            {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)},
            F4 * 2,
            "payload.tensors['b'].data_offsets",
            "overlaps",
        ),
        ({"": _entry("F32", [1], 0, 4)}, F4, "payload.index", "must not be empty"),
        ({"a": {"dtype": "F32", "shape": [1]}}, F4, "payload.tensors['a']", "exactly"),
        ({"a": [1]}, F4, "payload.tensors['a']", "exactly"),
        ({"__metadata__": {"k": 1}}, b"", "payload.__metadata__", "strings to strings"),
        ([1, 2], b"", "payload.index", "JSON object"),
    ],
)
def test_structural_rules(index: Any, data: bytes, where: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        read_tensors(_payload(index, data))
    assert caught.value.where == where
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (memoryview(b"\x01\x00"), "too short"),
        (memoryview((100).to_bytes(8, "little") + b"{}"), "runs past the payload end"),
        (_payload(None, raw_index=b"{nope"), "not valid JSON"),
        (_payload(None, raw_index=b'{"\xff":1}'), "not UTF-8"),
        (_payload(None, raw_index=b'{"a":' + b"9" * 5000 + b"}"), "not valid JSON"),
    ],
)
def test_unreadable_indexes(payload: memoryview, words: str) -> None:
    with pytest.raises(FrameError, match=words):
        read_tensors(payload)


def test_duplicate_names_and_json_constants_are_refused() -> None:
    with pytest.raises(ValidationError, match="'a' appears twice"):
        read_tensors(_payload(None, F4 * 2, raw_index=b'{"a":{},"a":{}}'))
    with pytest.raises(ValidationError, match="NaN is not allowed"):
        read_tensors(_payload(None, raw_index=b'{"__metadata__":{"k":NaN}}'))


def test_limits_on_count_and_rank() -> None:
    payload = memoryview(write_tensors({f"t{i}": np.zeros(1, dtype=np.uint8) for i in range(5)}))
    with pytest.raises(ValidationError, match="5 tensors, over the limit of 4"):
        read_tensors(payload, Limits(max_tensors=4))
    deep = memoryview(write_tensors({"d": np.zeros((1, 1, 1), dtype=np.uint8)}))
    with pytest.raises(ValidationError, match="at most 2"):
        read_tensors(deep, Limits(max_ndim=2))


def test_empty_tensors_may_share_an_offset() -> None:
    index = {"a": _entry("F32", [0], 0, 0), "b": _entry("I8", [0, 3], 0, 0)}
    read = read_tensors(_payload(index))
    assert read["a"].shape == (0,)
    assert read["b"].shape == (0, 3)


DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=1, max_size=12), max_size=5, unique=True))
    return {
        name: draw(hnp.arrays(draw(st.sampled_from([*DTYPES, np.bool_])), SHAPES))
        for name in names
        if name != "__metadata__"
    }


@settings(max_examples=200, deadline=None)
@given(tensors=tensor_dicts())
def test_safetensors_reads_what_we_write(tensors: dict[str, np.ndarray]) -> None:
    theirs = safetensors.numpy.load(write_tensors(tensors))
    assert set(theirs) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(theirs[name], value)
        assert theirs[name].dtype == value.dtype


@settings(max_examples=200, deadline=None)
@given(tensors=tensor_dicts())
def test_we_read_what_safetensors_writes(tensors: dict[str, np.ndarray]) -> None:
    ours = read_tensors(memoryview(safetensors.numpy.save(tensors, metadata={"format": "np"})))
    assert set(ours) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(ours[name], value)
        assert ours[name].dtype == value.dtype


def test_metadata_round_trips_and_safetensors_reads_it() -> None:
    import numpy as np
    import safetensors.numpy

    from bus.protocol.tensors import read_tensors_with_metadata, write_tensors

    data = write_tensors({"w": np.ones(2, dtype=np.float32)}, metadata={"architecture": "mlp"})
    tensors, metadata = read_tensors_with_metadata(memoryview(data))
    assert metadata == {"architecture": "mlp"}
    assert tensors["w"].tolist() == [1.0, 1.0]
    assert safetensors.numpy.load(data)["w"].tolist() == [1.0, 1.0]
