"""Update codecs: how a model delta is squeezed into payload tensors and restored (pure numpy).

Floating tensors are encoded by the codec; anything else (step counters) travels as it is.
`#` is reserved in tensor names for the codecs' side tensors (`w#scale`, `#topk`).

Top-k packs every floating tensor of the update into one byte string, `#topk`: first one int8
scale per tensor (float32, little endian), then the int8 values (the k kept entries of each
tensor; every entry of a running statistic), then the flat indices of the kept entries as
LEB128 varints of the gaps between them, all in the manifest's order. At 1-5 % density a kept
entry costs about two bytes instead of eight (float32 value + int32 index), and one payload
tensor instead of two or three per model tensor keeps the safetensors header small, which
decides the size for models of a few thousand weights. Quantization error is not lost: it
stays in the residual with what was not sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    packed = _Packed()
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
            packed.add(*_quantize(values.ravel()), np.zeros(0, dtype=np.int64))
        elif codec.name is CodecName.TOPK:
            assert new_residual is not None
            new_residual[name] = _topk(name, values, codec, residual, packed)
        else:
            tensors.update(_encode_dense(name, values, codec.name))
    if packed.scales:
        tensors[TOPK_TENSOR] = packed.bytes()
    return EncodedDelta(tensors, tuple(manifest), new_residual)


TOPK_TENSOR = "#topk"


@dataclass
class _Packed:
    """The parts of `#topk`, gathered tensor by tensor in the manifest's order."""

    scales: list[np.float32] = field(default_factory=list)
    values: list[npt.NDArray[np.int8]] = field(default_factory=list)
    gaps: list[npt.NDArray[np.int64]] = field(default_factory=list)

    def add(
        self, scale: np.float32, values: npt.NDArray[np.int8], gaps: npt.NDArray[np.int64]
    ) -> None:
        self.scales.append(scale)
        self.values.append(values)
        self.gaps.append(gaps)

    def bytes(self) -> npt.NDArray[np.uint8]:
        scales = np.asarray(self.scales, dtype="<f4").view(np.uint8)
        values = np.concatenate(self.values).view(np.uint8)
        return np.concatenate([scales, values, varints(np.concatenate(self.gaps))])


def _quantize(values: npt.NDArray[np.float32]) -> tuple[np.float32, npt.NDArray[np.int8]]:
    """int8 with one scale, max|v| / 127 (0 for all zeros), as the int8 codec does."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = np.float32(peak / 127.0)
    if scale > 0:
        return scale, np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return scale, np.zeros(values.shape, dtype=np.int8)


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
    packed: _Packed,
) -> npt.NDArray[np.float32]:
    """Adds the tensor's k largest entries (after the residual) to `packed`; returns what it
    did not send, quantization error included: the next residual."""
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
    scale, quantized = _quantize(flat[index])
    left = flat.copy()
    left[index] -= quantized.astype(np.float32) * scale
    packed.add(scale, quantized, np.diff(index, prepend=-1) - 1)
    return left.reshape(values.shape)


VARINT_MAX_BYTES = 5  # 35 bits: every flat index below max_decoded_bytes' bound fits


def varints(values: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
    """LEB128 (7 bits a byte, low first, high bit = more follows) of non-negative integers."""
    numbers = np.asarray(values, dtype=np.uint64)
    if numbers.size and int(numbers.max()) >= 1 << (7 * VARINT_MAX_BYTES):
        raise CodecError(f"a varint above {7 * VARINT_MAX_BYTES} bits", where="varints")
    lengths = np.ones(numbers.shape, dtype=np.int64)
    for width in range(1, VARINT_MAX_BYTES):
        lengths += numbers >= np.uint64(1 << (7 * width))
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for byte in range(VARINT_MAX_BYTES):
        here = lengths > byte
        if not here.any():
            break
        chunk = (numbers[here] >> np.uint64(7 * byte)) & np.uint64(0x7F)
        more = np.where(lengths[here] > byte + 1, 0x80, 0).astype(np.uint64)
        out[starts[here] + byte] = (chunk | more).astype(np.uint8)
    return out


def unvarints(data: npt.NDArray[np.uint8], count: int, where: str) -> npt.NDArray[np.int64]:
    """Exactly `count` LEB128 varints filling `data`, each at most VARINT_MAX_BYTES long."""
    ends = np.flatnonzero((data & 0x80) == 0)
    if ends.size != count or (data.size and (ends.size == 0 or ends[-1] != data.size - 1)):
        raise CodecError(
            f"index part must be exactly {count} varints ({ends.size} complete, {data.size} bytes)",
            where=where,
        )
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = ends - starts + 1
    if lengths.size and int(lengths.max()) > VARINT_MAX_BYTES:
        raise CodecError(f"a varint longer than {VARINT_MAX_BYTES} bytes", where=where)
    numbers = np.zeros(count, dtype=np.int64)
    for byte in range(int(lengths.max()) if lengths.size else 0):
        here = lengths > byte
        numbers[here] |= (data[starts[here] + byte].astype(np.int64) & 0x7F) << (7 * byte)
    return numbers


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
    if codec.name is CodecName.TOPK and any(spec.dtype == "F32" for spec in manifest):
        if TOPK_TENSOR not in payload:
            raise CodecError(
                "missing from the payload for codec topk", where=f"payload.tensors[{TOPK_TENSOR!r}]"
            )
        expected.add(TOPK_TENSOR)
        assert codec.topk_ratio is not None
        decoded.update(_unpack_topk(payload[TOPK_TENSOR], manifest, codec.topk_ratio))
    for spec in manifest:
        if codec.name is CodecName.TOPK and spec.dtype == "F32":
            continue
        if spec.dtype != "F32" or codec.name is CodecName.FP32:
            names = [spec.name]
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
        decoded[spec.name] = _decode_one(spec, payload, codec)
    extra = sorted(set(payload) - expected)
    if extra:
        raise CodecError(
            f"payload holds tensors the header does not list: {extra[:5]}", where="payload.tensors"
        )
    return {spec.name: decoded[spec.name] for spec in manifest}  # the manifest's order


def _require(
    array: npt.NDArray[Any], code: str, shape: tuple[int, ...], name: str
) -> npt.NDArray[Any]:
    if array.dtype != DTYPES[code] or array.shape != shape:
        raise CodecError(
            f"is {dtype_code(array.dtype)} {list(array.shape)}, expected {code} {list(shape)}",
            where=f"payload.tensors[{name!r}]",
        )
    return array


def _checked_scale(value: float, where: str) -> np.float32:
    if not 0 <= value <= MAX_INT8_SCALE:  # also false for NaN
        raise CodecError(
            f"scale must be finite, >= 0 and <= {MAX_INT8_SCALE:g} (got {value})", where=where
        )
    return np.float32(value)


def _checked_int8(quantized: npt.NDArray[np.int8], where: str) -> npt.NDArray[np.int8]:
    if np.any(quantized == -128):
        raise CodecError("int8 values must lie in -127..127", where=where)
    return quantized


def _decode_one(
    spec: TensorSpec, payload: Mapping[str, npt.NDArray[Any]], codec: CodecSpec
) -> npt.NDArray[Any]:
    name, shape = spec.name, tuple(spec.shape)
    if spec.dtype != "F32":
        return _require(payload[name], spec.dtype, shape, name)
    if codec.name is CodecName.FP32:
        return _require(payload[name], "F32", shape, name)
    if codec.name is CodecName.FP16:
        return _require(payload[name], "F16", shape, name).astype(np.float32)
    where = f"payload.tensors[{name!r}]"
    quantized = _checked_int8(_require(payload[name], "I8", shape, name), where)
    scale = _require(payload[f"{name}#scale"], "F32", (), f"{name}#scale")
    checked = _checked_scale(float(scale), f"payload.tensors[{name + '#scale'!r}]")
    return quantized.astype(np.float32) * checked


def _unpack_topk(packed: npt.NDArray[Any], manifest: Sequence[TensorSpec], ratio: float) -> Tensors:
    """The float tensors of a top-k update from `#topk`, every length derived from the manifest
    and the ratio, so a byte string of any other shape is refused before anything is read."""
    where = f"payload.tensors[{TOPK_TENSOR!r}]"
    specs = [spec for spec in manifest if spec.dtype == "F32"]
    sizes = [math.prod(spec.shape) for spec in specs]
    kept = [
        n if is_statistic(s.name) else topk_count(n, ratio)
        for s, n in zip(specs, sizes, strict=True)
    ]
    heads = 4 * len(specs)
    count = sum(k for s, k in zip(specs, kept, strict=True) if not is_statistic(s.name))
    if packed.dtype != DTYPES["U8"] or packed.ndim != 1 or packed.size < heads + sum(kept) + count:
        raise CodecError(
            f"must be a 1-D U8 tensor of at least {heads + sum(kept) + count} bytes "
            f"({len(specs)} scales, {sum(kept)} values, {count} indices), "
            f"got {dtype_code(packed.dtype)} {list(packed.shape)}",
            where=where,
        )
    scales = packed[:heads].view("<f4")
    values = _checked_int8(packed[heads : heads + sum(kept)].view(np.int8), where)
    gaps = unvarints(packed[heads + sum(kept) :], count, where)
    decoded: Tensors = {}
    value_at = gap_at = 0
    for spec, numel, k, scale in zip(specs, sizes, kept, scales, strict=True):
        step = _checked_scale(float(scale), where)
        mine = values[value_at : value_at + k].astype(np.float32) * step
        value_at += k
        if is_statistic(spec.name):
            decoded[spec.name] = mine.reshape(tuple(spec.shape))
            continue
        index = np.cumsum(gaps[gap_at : gap_at + k] + 1) - 1
        gap_at += k
        if index.size and int(index[-1]) >= numel:
            raise CodecError(
                f"indices of {spec.name!r} must lie within 0..{numel - 1}", where=where
            )
        dense = np.zeros(numel, dtype=np.float32)
        dense[index] = mine
        decoded[spec.name] = dense.reshape(tuple(spec.shape))
    return decoded
