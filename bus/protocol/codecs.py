"""Update codecs: how a model delta is squeezed into payload tensors and restored (pure numpy).

Floating tensors are encoded by the codec; anything else (step counters) travels as it is.
`#` is reserved in tensor names for the codecs' side tensors (`w#scale`, `w#idx`, `w#val`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import CodecError
from bus.protocol.envelopes import CodecName, CodecSpec, TensorSpec
from bus.protocol.tensors import DTYPES, Tensors, dtype_code

FP16_MAX = float(np.finfo(np.float16).max)
# the largest int8 scale whose decoded values (up to 127 * scale) stay finite in float32
MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 127
Residual = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class EncodedDelta:
    """Payload tensors, the manifest of the decoded tensors, and the top-k residual to keep."""

    tensors: Tensors
    manifest: tuple[TensorSpec, ...]
    residual: Residual | None


STATISTICS = ("running_mean", "running_var")


def is_statistic(name: str) -> bool:
    """BatchNorm's running statistics (`….running_mean`, `….running_var`): estimates to average,
    not weights to step. Top-k sends them dense — error feedback on a variance can drive it
    negative — and server optimizers apply their mean as it is."""
    return name.rsplit(".", 1)[-1] in STATISTICS


def _is_float(array: npt.NDArray[Any]) -> bool:
    return array.dtype.kind == "f"


def topk_count(numel: int, ratio: float) -> int:
    return 0 if numel == 0 else min(numel, max(1, math.ceil(ratio * numel)))


def encode_delta(
    delta: Mapping[str, npt.ArrayLike],
    codec: CodecSpec,
    residual: Mapping[str, npt.NDArray[Any]] | None = None,
) -> EncodedDelta:
    """Encode `delta`; for top-k, `residual` is what the previous update did not send."""
    tensors: Tensors = {}
    manifest: list[TensorSpec] = []
    new_residual: Residual | None = {} if codec.name is CodecName.TOPK else None
    for name, value in delta.items():
        array = np.asarray(value)
        where = f"delta[{name!r}]"
        if not name or "#" in name:
            raise CodecError("tensor names must be non-empty and must not contain '#'", where=where)
        if not _is_float(array):
            dtype_code(array.dtype)
            tensors[name] = array
            manifest.append(TensorSpec(name=name, dtype=dtype_code(array.dtype), shape=array.shape))
            continue
        values = array.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise CodecError("holds NaN or Inf", where=where)
        manifest.append(TensorSpec(name=name, dtype="F32", shape=values.shape))
        if codec.name is CodecName.TOPK and is_statistic(name):
            tensors[name] = values
        elif codec.name is CodecName.TOPK:
            kept, left = _topk(name, values, codec, residual)
            tensors.update(kept)
            assert new_residual is not None
            new_residual[name] = left
        else:
            tensors.update(_encode_dense(name, values, codec.name))
    return EncodedDelta(tensors, tuple(manifest), new_residual)


def _encode_dense(name: str, values: npt.NDArray[np.float32], codec: CodecName) -> Tensors:
    if codec is CodecName.FP32:
        return {name: values}
    if codec is CodecName.FP16:
        if values.size and float(np.max(np.abs(values))) > FP16_MAX:
            raise CodecError(
                f"values beyond the fp16 range (±{FP16_MAX:g})", where=f"delta[{name!r}]"
            )
        return {name: values.astype(np.float16)}
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = np.float32(peak / 127.0)
    if scale > 0:
        quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    else:
        quantized = np.zeros(values.shape, dtype=np.int8)
    return {name: quantized, f"{name}#scale": np.asarray(scale, dtype=np.float32)}


def _topk(
    name: str,
    values: npt.NDArray[np.float32],
    codec: CodecSpec,
    residual: Mapping[str, npt.NDArray[Any]] | None,
) -> tuple[Tensors, npt.NDArray[np.float32]]:
    accumulated = values.copy()
    if residual is not None and name in residual:
        carried = np.asarray(residual[name], dtype=np.float32)
        if carried.shape != values.shape:
            raise CodecError(
                f"residual shape {list(carried.shape)} differs from {list(values.shape)}",
                where=f"residual[{name!r}]",
            )
        accumulated += carried
        if not np.all(np.isfinite(accumulated)):
            raise CodecError(
                "holds NaN or Inf once the residual is added", where=f"residual[{name!r}]"
            )
    flat = accumulated.ravel()
    assert codec.topk_ratio is not None
    k = topk_count(flat.size, codec.topk_ratio)
    if k == flat.size:
        index = np.arange(flat.size, dtype=np.int64)
    else:
        index = (
            np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k else np.zeros(0, dtype=np.int64)
        )
    sent = flat[index].astype(np.float32)
    left = flat.copy()
    left[index] = 0.0
    return {f"{name}#idx": index.astype(np.int32), f"{name}#val": sent}, left.reshape(values.shape)


def decode_delta(
    payload: Mapping[str, npt.NDArray[Any]], codec: CodecSpec, manifest: Sequence[TensorSpec]
) -> Tensors:
    """Undo the codec, checking the payload holds exactly what the manifest and codec imply."""
    expected: set[str] = set()
    decoded: Tensors = {}
    for spec in manifest:
        if "#" in spec.name:
            raise CodecError(
                "tensor names must not contain '#'", where=f"header.tensors[{spec.name!r}]"
            )
        dense_topk = codec.name is CodecName.TOPK and is_statistic(spec.name)
        if spec.dtype != "F32" or codec.name is CodecName.FP32 or dense_topk:
            names = [spec.name]
        elif codec.name is CodecName.TOPK:
            names = [f"{spec.name}#idx", f"{spec.name}#val"]
        elif codec.name is CodecName.INT8:
            names = [spec.name, f"{spec.name}#scale"]
        else:
            names = [spec.name]
        expected.update(names)
        for part in names:
            if part not in payload:
                raise CodecError(
                    f"missing from the payload for codec {codec.name.value}",
                    where=f"payload.tensors[{part!r}]",
                )
        decoded[spec.name] = _decode_one(spec, payload, codec.name)
    extra = sorted(set(payload) - expected)
    if extra:
        raise CodecError(
            f"payload holds tensors the header does not list: {extra[:5]}", where="payload.tensors"
        )
    return decoded


def _require(
    array: npt.NDArray[Any], code: str, shape: tuple[int, ...], name: str
) -> npt.NDArray[Any]:
    if array.dtype != DTYPES[code] or array.shape != shape:
        raise CodecError(
            f"is {dtype_code(array.dtype)} {list(array.shape)}, expected {code} {list(shape)}",
            where=f"payload.tensors[{name!r}]",
        )
    return array


def _decode_one(
    spec: TensorSpec, payload: Mapping[str, npt.NDArray[Any]], codec: CodecName
) -> npt.NDArray[Any]:
    name, shape = spec.name, tuple(spec.shape)
    if spec.dtype != "F32":
        return _require(payload[name], spec.dtype, shape, name)
    if codec is CodecName.FP32:
        return _require(payload[name], "F32", shape, name)
    if codec is CodecName.FP16:
        return _require(payload[name], "F16", shape, name).astype(np.float32)
    if codec is CodecName.INT8:
        quantized = _require(payload[name], "I8", shape, name)
        scale = _require(payload[f"{name}#scale"], "F32", (), f"{name}#scale")
        value = float(scale)
        if not 0 <= value <= MAX_INT8_SCALE:  # also false for NaN
            raise CodecError(
                f"scale must be finite, >= 0 and <= {MAX_INT8_SCALE:g} (got {value})",
                where=f"payload.tensors[{name + '#scale'!r}]",
            )
        if np.any(quantized == -128):
            raise CodecError(
                "int8 values must lie in -127..127", where=f"payload.tensors[{name!r}]"
            )
        return quantized.astype(np.float32) * np.float32(value)
    if is_statistic(name):  # top-k sends statistics dense
        return _require(payload[name], "F32", shape, name)
    return _decode_topk(name, shape, payload)


def _decode_topk(
    name: str, shape: tuple[int, ...], payload: Mapping[str, npt.NDArray[Any]]
) -> npt.NDArray[np.float32]:
    index = payload[f"{name}#idx"]
    values = payload[f"{name}#val"]
    numel = math.prod(shape)
    if index.dtype != DTYPES["I32"] or index.ndim != 1:
        raise CodecError("must be a 1-D I32 tensor", where=f"payload.tensors[{name + '#idx'!r}]")
    if values.dtype != DTYPES["F32"] or values.shape != index.shape:
        raise CodecError(
            f"must be F32 with the same length as {name}#idx",
            where=f"payload.tensors[{name + '#val'!r}]",
        )
    if index.size and (int(index[0]) < 0 or int(index[-1]) >= numel or np.any(np.diff(index) <= 0)):
        raise CodecError(
            f"indices must be unique, ascending and within 0..{numel - 1}",
            where=f"payload.tensors[{name + '#idx'!r}]",
        )
    dense = np.zeros(numel, dtype=np.float32)
    dense[index] = values
    return dense.reshape(shape)
