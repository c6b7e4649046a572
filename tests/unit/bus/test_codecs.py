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


def test_topk_error_feedback_over_two_rounds() -> None:
    codec = topk(0.5)
    first = {"w": np.array([4.0, -1.0, 0.5, 3.0], dtype=np.float32)}
    sent1 = encode_delta(first, codec)
    assert sent1.tensors["w#idx"].tolist() == [0, 3]
    assert sent1.tensors["w#val"].tolist() == [4.0, 3.0]
    assert sent1.residual is not None
    assert sent1.residual["w"].tolist() == [0.0, -1.0, 0.5, 0.0]
    second = {"w": np.array([0.1, -1.5, 0.2, 0.1], dtype=np.float32)}
    sent2 = encode_delta(second, codec, sent1.residual)
    assert sent2.tensors["w#idx"].tolist() == [1, 2]  # accumulated -2.5 and 0.7 win
    decoded1 = decode_delta(sent1.tensors, codec, sent1.manifest)["w"]
    decoded2 = decode_delta(sent2.tensors, codec, sent2.manifest)["w"]
    assert sent2.residual is not None
    total_sent = decoded1 + decoded2 + sent2.residual["w"]
    np.testing.assert_allclose(total_sent, first["w"] + second["w"], atol=1e-6)


def test_topk_decoder_rejects_bad_indices() -> None:
    encoded = encode_delta({"w": np.arange(4, dtype=np.float32)}, topk(0.5))
    bad = dict(encoded.tensors)
    bad["w#idx"] = np.array([3, 1], dtype=np.int32)
    with pytest.raises(CodecError, match="ascending"):
        decode_delta(bad, topk(0.5), encoded.manifest)
    bad["w#idx"] = np.array([1, 9], dtype=np.int32)
    with pytest.raises(CodecError, match="within"):
        decode_delta(bad, topk(0.5), encoded.manifest)


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
    np.testing.assert_allclose(decoded + encoded.residual["w"], accumulated, rtol=1e-6, atol=1e-6)
    expected_k = 0 if value.size == 0 else max(1, math.ceil(ratio * value.size))
    assert len(encoded.tensors["w#idx"]) == min(value.size, expected_k)


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
