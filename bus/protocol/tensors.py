"""The tensor payload: the safetensors layout, read without copying, written without a dependency.

    u64 LE  N            length of the JSON index
    N bytes JSON index   {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {..}}
    ...     data buffer  tensors back to back, little-endian, row-major

Any safetensors library reads what we write and we read what it writes; decoding returns numpy
views into the caller's buffer, so a 100 MB update costs no extra 100 MB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bus.errors import FrameError, ValidationError
from bus.protocol.envelopes import MAX_ELEMENTS, DType
from bus.protocol.limits import DEFAULT_LIMITS, Limits

# safetensors dtype code -> numpy dtype (explicitly little-endian)
DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {(dtype.kind, dtype.itemsize): code for code, dtype in DTYPES.items()}
METADATA_KEY = "__metadata__"
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

Tensors = dict[str, npt.NDArray[Any]]


def dtype_code(dtype: np.dtype[Any]) -> DType:
    """The safetensors code for a numpy dtype, or a ValidationError naming what is unsupported."""
    code = _CODES.get((dtype.kind, dtype.itemsize))
    if code is None:
        supported = ", ".join(DTYPES)
        raise ValidationError(f"dtype {dtype} has no wire code; supported: {supported}")
    return cast(DType, code)


def write_tensors(
    tensors: Mapping[str, npt.ArrayLike], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise `tensors` in insertion order."""
    index: dict[str, Any] = {}
    if metadata:
        index[METADATA_KEY] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        array = np.asarray(value)
        code = dtype_code(array.dtype)
        raw = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        index[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header += b" " * (-len(header) % 8)  # keep the data buffer 8-byte aligned, as safetensors does
    return len(header).to_bytes(8, "little") + header + b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValidationError(f"key {key!r} appears twice", where="payload.index")
        result[key] = value
    return result


def parse_json(raw: bytes | memoryview, *, where: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity literals."""
    try:
        text = bytes(raw).decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ValidationError as exc:
        raise ValidationError(exc.reason, where=where) from exc
    except UnicodeDecodeError as exc:
        raise FrameError(f"not UTF-8 ({exc.reason} at byte {exc.start})", where=where) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int of 4300+ digits
        raise FrameError(f"not valid JSON ({exc})", where=where) from exc


def _reject_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not allowed in JSON", where="json")


def read_tensors(payload: memoryview, limits: Limits = DEFAULT_LIMITS) -> Tensors:
    """Parse a safetensors buffer into read-only numpy views of `payload`, in index order."""
    return read_tensors_with_metadata(payload, limits)[0]


def read_tensors_with_metadata(
    payload: memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[Tensors, dict[str, str]]:
    """`read_tensors`, plus the `__metadata__` strings (checkpoints keep their config there)."""
    if len(payload) < 8:
        raise FrameError(f"{len(payload)} bytes is too short for a tensor index", where="payload")
    size = int.from_bytes(payload[:8], "little")
    if size > len(payload) - 8:
        raise FrameError(f"index length {size} runs past the payload end", where="payload.index")
    index = parse_json(payload[8 : 8 + size], where="payload.index")
    if not isinstance(index, dict):
        raise ValidationError("must be a JSON object", where="payload.index")
    metadata = index.pop(METADATA_KEY, None)
    _check_metadata(metadata)
    if len(index) > limits.max_tensors:
        raise ValidationError(
            f"{len(index)} tensors, over the limit of {limits.max_tensors}", where="payload.index"
        )
    data = payload[8 + size :]
    entries = [(name, *_entry(name, entry, limits)) for name, entry in index.items()]
    _check_tiling(entries, len(data))
    tensors = {
        name: np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=begin).reshape(shape)
        for name, dtype, shape, begin, _ in entries
    }
    return tensors, dict(metadata or {})


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValidationError("must map strings to strings", where="payload.__metadata__")


def _entry(
    name: str, entry: Any, limits: Limits
) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    where = f"payload.tensors[{name!r}]"
    if not name:
        raise ValidationError("tensor names must not be empty", where="payload.index")
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise ValidationError(
            "must be an object with exactly dtype, shape, data_offsets", where=where
        )
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise ValidationError(
            f"unsupported dtype {code!r}; supported: {', '.join(DTYPES)}", where=f"{where}.dtype"
        )
    if not _int_list(shape) or len(shape) > limits.max_ndim:
        raise ValidationError(
            f"must be a list of at most {limits.max_ndim} non-negative integers (got {shape!r})",
            where=f"{where}.shape",
        )
    if not _int_list(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise ValidationError(
            f"must be [begin, end] with begin <= end (got {offsets!r})",
            where=f"{where}.data_offsets",
        )
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise ValidationError(
            f"the non-zero dimensions multiply to more than 2**53 (got {shape!r})",
            where=f"{where}.shape",
        )
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise ValidationError(
            f"spans {offsets[1] - offsets[0]} bytes but {code} {shape} needs {expected}",
            where=f"{where}.data_offsets",
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _check_tiling(
    entries: list[tuple[str, np.dtype[Any], tuple[int, ...], int, int]], length: int
) -> None:
    """Tensors must cover the data buffer exactly: no gaps, overlaps or trailing bytes."""
    position = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != position:
            problem = (
                "overlaps the previous tensor"
                if begin < position
                else f"leaves a gap at byte {position}"
            )
            raise ValidationError(problem, where=f"payload.tensors[{name!r}].data_offsets")
        position = end
    if position != length:
        raise ValidationError(
            f"tensors cover {position} of {length} data bytes", where="payload.data"
        )
