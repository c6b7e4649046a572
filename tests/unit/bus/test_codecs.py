"""Update codecs with literal values, and hypothesis round trips within each codec's tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bus.errors import CodecError
from bus.protocol import CodecSpec, decode_delta, encode_delta
from bus.protocol.codecs import unvarints, varints

INT8 = CodecSpec(name="int8")
FP16 = CodecSpec(name="fp16")
FP32 = CodecSpec(name="fp32")


def topk(ratio: float) -> CodecSpec:
    return CodecSpec(name="topk", topk_ratio=ratio)


def test_int8_scale_by_hand() -> None:
    delta = {"w": np.array([-2.54, 0.0, 1.27, 0.5], dtype=np.float32)}
    encoded = encode_delta(delta, INT8)
    assert float(encoded.tensors["w#scale"]) == pytest.approx(0.02)
    assert encoded.tensors["w"].tolist() == [-127, 0, 64, 25]  # 1.27/0.02 = 63.5 rounds to even 64
    decoded = decode_delta(encoded.tensors, INT8, encoded.manifest)["w"]
    np.testing.assert_allclose(decoded, [-2.54, 0.0, 1.28, 0.5], atol=1e-6)


def test_int8_all_zero_tensor_has_scale_zero() -> None:
    encoded = encode_delta({"w": np.zeros(3, dtype=np.float32)}, INT8)
    assert float(encoded.tensors["w#scale"]) == 0.0
    assert decode_delta(encoded.tensors, INT8, encoded.manifest)["w"].tolist() == [0.0] * 3


def test_fp16_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(CodecError, match="fp16 range"):
        encode_delta({"w": np.array([1e6], dtype=np.float32)}, FP16)


def test_non_finite_deltas_are_refused() -> None:
    with pytest.raises(CodecError, match="NaN"):
        encode_delta({"w": np.array([np.nan], dtype=np.float32)}, FP32)


def test_reserved_hash_in_names() -> None:
    with pytest.raises(CodecError, match="'#'"):
        encode_delta({"w#scale": np.zeros(1, dtype=np.float32)}, FP32)


def test_integer_tensors_pass_through_raw() -> None:
    encoded = encode_delta({"steps": np.array([7], dtype=np.int64)}, INT8)
    assert encoded.tensors["steps"].dtype == np.int64
    assert encoded.manifest[0].dtype == "I64"


def unpack(packed: np.ndarray, k: int) -> tuple[float, list[int], list[int]]:
    """Scale, int8 values and flat indices of a one-tensor `#topk` byte string, by hand."""
    scale = float(np.frombuffer(packed[:4].tobytes(), dtype="<f4")[0])
    values = packed[4 : 4 + k].view(np.int8).tolist()
    index, position = [], -1
    for gap in unvarints(packed[4 + k :], k, "test"):
        position += int(gap) + 1
        index.append(position)
    return scale, values, index


def test_topk_error_feedback_over_two_rounds() -> None:
    codec = topk(0.5)
    first = {"w": np.array([4.0, -1.0, 0.5, 3.0], dtype=np.float32)}
    sent1 = encode_delta(first, codec)
    assert set(sent1.tensors) == {"#topk"}
    scale, values, index = unpack(sent1.tensors["#topk"], 2)
    assert index == [0, 3]
    assert scale == pytest.approx(4.0 / 127)
    assert values == [127, 95]  # 3.0 / (4/127) = 95.25
    assert sent1.residual is not None
    np.testing.assert_allclose(
        sent1.residual["w"], [0.0, -1.0, 0.5, 3.0 - 95 * 4.0 / 127], atol=1e-6
    )
    second = {"w": np.array([0.1, -1.5, 0.2, 0.1], dtype=np.float32)}
    sent2 = encode_delta(second, codec, sent1.residual)
    assert unpack(sent2.tensors["#topk"], 2)[2] == [1, 2]  # accumulated -2.5 and 0.7 win
    decoded1 = decode_delta(sent1.tensors, codec, sent1.manifest)["w"]
    decoded2 = decode_delta(sent2.tensors, codec, sent2.manifest)["w"]
    assert sent2.residual is not None
    total_sent = decoded1 + decoded2 + sent2.residual["w"]
    np.testing.assert_allclose(total_sent, first["w"] + second["w"], atol=1e-6)


def test_topk_packs_every_tensor_into_one_byte_string_in_manifest_order() -> None:
    delta: dict[str, np.ndarray] = {
        "a": np.array([0.0, 2.0, 0.0, -1.0], dtype=np.float32),
        "bn.running_mean": np.array([0.5, -0.25], dtype=np.float32),
        "steps": np.array([3], dtype=np.int64),
        "b": np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0], dtype=np.float32),
    }
    encoded = encode_delta(delta, topk(0.2))  # k = 1 of a, 2 of b; the statistic whole
    assert set(encoded.tensors) == {"#topk", "steps"}
    packed = encoded.tensors["#topk"]
    scales = packed[:12].view("<f4")
    np.testing.assert_allclose(scales, [2 / 127, 0.5 / 127, 8 / 127], rtol=1e-6)
    assert packed[12:17].view(np.int8).tolist() == [127, 127, -64, 16, 127]
    assert packed[17:].tolist() == [1, 0, 8]  # a: index 1; b: 0, then a gap of 8 to 9
    decoded = decode_delta(encoded.tensors, topk(0.2), encoded.manifest)
    assert list(decoded) == list(delta)
    np.testing.assert_allclose(decoded["b"], [16 * 8 / 127, *[0.0] * 8, 8.0], rtol=1e-6)
    np.testing.assert_allclose(decoded["bn.running_mean"], [0.5, -64 * 0.5 / 127], rtol=1e-6)


def test_topk_packs_about_two_bytes_per_kept_entry() -> None:
    value = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    packed = encode_delta({"w": value}, topk(0.05)).tensors["#topk"]
    assert packed.dtype == np.uint8
    assert 4 + 5_000 + 5_000 <= packed.size < 4 + 5_000 + 5_500  # gaps of ~20: one byte each


def test_varints_round_trip_at_every_width() -> None:
    numbers = np.array([0, 1, 127, 128, 16_383, 16_384, 2**28, 2**35 - 1], dtype=np.uint64)
    packed = varints(numbers)
    assert packed[:5].tolist() == [0, 1, 127, 0x80, 0x01]
    assert unvarints(packed, numbers.size, "w").tolist() == numbers.tolist()
    with pytest.raises(CodecError, match="35 bits"):
        varints(np.array([2**35], dtype=np.uint64))


def test_topk_decoder_rejects_damaged_byte_strings() -> None:
    encoded = encode_delta({"w": np.arange(8, dtype=np.float32)}, topk(0.25))
    packed = encoded.tensors["#topk"]  # scale, 2 values, 2 one-byte gaps

    def refused(bad: np.ndarray, match: str) -> None:
        with pytest.raises(CodecError, match=match) as caught:
            decode_delta({"#topk": bad}, topk(0.25), encoded.manifest)
        assert caught.value.where == "payload.tensors['#topk']"

    refused(packed[:5], "at least 8 bytes")
    refused(packed.astype(np.int8), "U8")
    refused(np.concatenate([packed, [0]]).astype(np.uint8), "exactly 2 varints")
    refused(np.concatenate([packed[:-1], [0x81]]).astype(np.uint8), "exactly 2 varints")
    beyond = packed.copy()
    beyond[-1] = 9  # the second index moves past the 8 entries
    refused(beyond, "within 0..7")
    nan_scale = packed.copy()
    nan_scale[:4] = np.frombuffer(np.float32(np.nan).tobytes(), dtype=np.uint8)
    refused(nan_scale, "scale must be finite")
    minus_128 = packed.copy()
    minus_128[4] = 0x80
    refused(minus_128, "-127")
    long_varint = np.concatenate([packed[:6], [0x80] * 5 + [0, 0]]).astype(np.uint8)
    refused(long_varint, "longer than 5 bytes")
    with pytest.raises(CodecError, match="missing") as caught:
        decode_delta({}, topk(0.25), encoded.manifest)
    assert caught.value.where == "payload.tensors['#topk']"


def test_decoder_rejects_missing_and_extra_tensors() -> None:
    encoded = encode_delta({"w": np.ones(2, dtype=np.float32)}, INT8)
    missing = {"w": encoded.tensors["w"]}
    with pytest.raises(CodecError, match="missing"):
        decode_delta(missing, INT8, encoded.manifest)
    extra = {**encoded.tensors, "v": np.ones(1, dtype=np.float32)}
    with pytest.raises(CodecError, match="does not list"):
        decode_delta(extra, INT8, encoded.manifest)


arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements=st.floats(-1e4, 1e4, width=32),
)


@settings(max_examples=200, deadline=None)
@given(value=arrays)
def test_fp32_and_fp16_round_trip(value: np.ndarray) -> None:
    for codec, rtol in ((FP32, 0.0), (FP16, 1e-3)):
        encoded = encode_delta({"w": value}, codec)
        decoded = decode_delta(encoded.tensors, codec, encoded.manifest)["w"]
        assert decoded.dtype == np.float32
        assert decoded.shape == value.shape
        np.testing.assert_allclose(decoded, value, rtol=rtol, atol=1e-3 if rtol else 0.0)


@settings(max_examples=200, deadline=None)
@given(value=arrays)
def test_int8_error_is_at_most_half_a_step(value: np.ndarray) -> None:
    encoded = encode_delta({"w": value}, INT8)
    scale = float(encoded.tensors["w#scale"])
    decoded = decode_delta(encoded.tensors, INT8, encoded.manifest)["w"]
    assert np.all(np.abs(decoded - value) <= scale / 2 + 1e-6 * max(1.0, scale))


@settings(max_examples=200, deadline=None)
@given(value=arrays, ratio=st.floats(0.01, 1.0), carried=st.booleans())
def test_topk_sent_plus_residual_equals_accumulated(
    value: np.ndarray, ratio: float, carried: bool
) -> None:
    codec = topk(ratio)
    residual = {"w": np.full(value.shape, 0.5, dtype=np.float32)} if carried else None
    encoded = encode_delta({"w": value}, codec, residual)
    decoded = decode_delta(encoded.tensors, codec, encoded.manifest)["w"]
    accumulated = value + (residual["w"] if residual else 0.0)
    assert encoded.residual is not None
    np.testing.assert_allclose(decoded + encoded.residual["w"], accumulated, rtol=1e-5, atol=1e-3)
    expected_k = min(value.size, 0 if value.size == 0 else max(1, math.ceil(ratio * value.size)))
    assert np.count_nonzero(decoded) <= expected_k
    assert encoded.tensors["#topk"].size >= 4 + 2 * expected_k


def test_int8_decoder_rejects_scales_that_overflow_or_are_negative() -> None:
    encoded = encode_delta({"w": np.ones(2, dtype=np.float32)}, INT8)
    for scale in (3e38, -0.5, np.inf, np.nan):
        bad = {**encoded.tensors, "w#scale": np.asarray(scale, dtype=np.float32)}
        with pytest.raises(CodecError, match="scale must be finite") as caught:
            decode_delta(bad, INT8, encoded.manifest)
        assert caught.value.where == "payload.tensors['w#scale']"
    bad = {**encoded.tensors, "w": np.array([-128, 0], dtype=np.int8)}
    with pytest.raises(CodecError, match=r"-127\.\.127"):
        decode_delta(bad, INT8, encoded.manifest)


def test_topk_refuses_a_residual_that_is_not_finite() -> None:
    residual = {"w": np.array([np.inf, 0.0], dtype=np.float32)}
    with pytest.raises(CodecError, match="residual") as caught:
        encode_delta({"w": np.ones(2, dtype=np.float32)}, topk(0.5), residual)
    assert caught.value.where == "residual['w']"
