"""Update validation: every rejection names its problem; a good update passes with its norm."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bus.protocol import CodecSpec, ModelUpdate
from cloud_trainer.validation import Expected, Verdict, check_update, model_spec

Arrays = dict[str, npt.NDArray[Any]]

MODEL: Arrays = {
    "w": np.zeros((2, 3), dtype=np.float32),
    "b": np.zeros(3, dtype=np.float32),
    "steps": np.zeros((), dtype=np.int64),
}
MESSAGE_ID = "0123456789abcdef0123456789abcdef"


def header(**changes: Any) -> ModelUpdate:
    fields: dict[str, Any] = {
        "id": MESSAGE_ID,
        "fleet": "fleet-a",
        "device_id": "dev-1",
        "round_id": "m-v000003-0",
        "model": "m",
        "base_version": 3,
        "num_examples": 10,
        "codec": CodecSpec(name="fp32"),
    }
    return ModelUpdate(**(fields | changes))


def expected(max_norm: float | None = None) -> Expected:
    return Expected(
        fleet="fleet-a",
        model="m",
        rounds={"m-v000003-0": 3},
        spec=model_spec(MODEL),
        max_norm=max_norm,
    )


def good_tensors() -> Arrays:
    return {
        "w": np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -0.25]], dtype=np.float32),
        "b": np.array([0.1, 0.2, -0.3], dtype=np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


def check(
    tensors: Arrays | None = None,
    *,
    max_norm: float | None = None,
    seen: set[str] | None = None,
    **changes: Any,
) -> Verdict:
    return check_update(
        header(**changes),
        good_tensors() if tensors is None else tensors,
        expected(max_norm),
        seen or set(),
    )


def rejected(verdict: Verdict, *words: str) -> None:
    assert not verdict.accepted
    assert verdict.reason is not None
    for word in words:
        assert word in verdict.reason, (word, verdict.reason)


# -- a good update ----------------------------------------------------------------------------


def test_model_spec_records_shapes_and_floating() -> None:
    spec = model_spec(MODEL)
    assert list(spec) == ["w", "b", "steps"]
    assert (spec["w"].shape, spec["w"].floating) == ((2, 3), True)
    assert (spec["steps"].shape, spec["steps"].floating) == ((), False)


def test_good_update_is_accepted_with_the_norm_of_all_floats() -> None:
    tensors = good_tensors()
    verdict = check(tensors)
    assert verdict.accepted
    assert verdict.reason is None
    # The integer tensor is no part of the norm.
    floats = np.concatenate([tensors["w"].ravel(), tensors["b"].ravel()])
    assert verdict.norm == pytest.approx(float(np.linalg.norm(floats)), rel=1e-6)


def test_float16_and_float64_deltas_count_for_a_float32_model() -> None:
    tensors = good_tensors()
    tensors["w"] = tensors["w"].astype(np.float16)
    tensors["b"] = tensors["b"].astype(np.float64)
    assert check(tensors).accepted


def test_float16_norm_is_not_limited_by_float16_range() -> None:
    # Squares summed in float16 would overflow (300² > 65504): the norm is still exact.
    tensors = good_tensors()
    tensors["w"] = np.full((2, 3), 300.0, dtype=np.float16)
    tensors["b"] = np.zeros(3, dtype=np.float16)
    verdict = check(tensors)
    assert verdict.accepted, verdict.reason
    assert verdict.norm == pytest.approx(300.0 * np.sqrt(6), rel=1e-6)


def test_all_zero_update_has_norm_zero() -> None:
    tensors = {name: np.zeros_like(value) for name, value in MODEL.items()}
    verdict = check(tensors)
    assert verdict.accepted
    assert verdict.norm == 0.0


def test_norm_under_the_bound_is_accepted() -> None:
    verdict = check(max_norm=100.0)
    assert verdict.accepted
    assert verdict.norm is not None
    assert verdict.norm < 100.0


def test_no_bound_accepts_a_big_norm() -> None:
    tensors = good_tensors()
    tensors["w"] = np.full((2, 3), 1e15, dtype=np.float32)
    verdict = check(tensors, max_norm=None)
    assert verdict.accepted
    assert verdict.norm == pytest.approx(1e15 * np.sqrt(6), rel=1e-6)


# -- the header -------------------------------------------------------------------------------


def test_wrong_fleet() -> None:
    rejected(check(fleet="fleet-b"), "fleet", "'fleet-b'", "'fleet-a'")


def test_wrong_model() -> None:
    rejected(check(model="other"), "model", "'other'", "'m'")


def test_round_not_open() -> None:
    rejected(check(round_id="m-v000002-0"), "round", "'m-v000002-0'", "not open", "m-v000003-0")


def test_round_not_open_when_none_is() -> None:
    verdict = check_update(
        header(), good_tensors(), Expected("fleet-a", "m", {}, model_spec(MODEL)), set()
    )
    rejected(verdict, "not open", "none")


def test_base_version_mismatch() -> None:
    rejected(check(base_version=2), "base_version 2", "base version 3")


def test_message_id_already_counted() -> None:
    rejected(check(seen={MESSAGE_ID}), "message id", MESSAGE_ID, "already counted")


def test_device_already_contributed_to_the_round() -> None:
    # A new message id, but the device's key for this round is already there.
    verdict = check(seen={"m-v000003-0/dev-1"})
    rejected(verdict, "device 'dev-1'", "already contributed", "'m-v000003-0'")


def test_same_device_in_another_round_is_not_a_duplicate() -> None:
    assert check(seen={"m-v000002-0/dev-1"}).accepted


# -- the tensors ------------------------------------------------------------------------------


def test_missing_tensor() -> None:
    tensors = good_tensors()
    del tensors["b"]
    rejected(check(tensors), "tensor names", "missing ['b']", "extra []")


def test_extra_tensor() -> None:
    tensors = good_tensors()
    tensors["bonus"] = np.zeros(1, dtype=np.float32)
    rejected(check(tensors), "tensor names", "missing []", "extra ['bonus']")


def test_wrong_order() -> None:
    tensors = good_tensors()
    reordered = {name: tensors[name] for name in ("b", "w", "steps")}
    rejected(check(reordered), "order")


def test_wrong_shape() -> None:
    tensors = good_tensors()
    tensors["w"] = np.zeros((3, 2), dtype=np.float32)
    rejected(check(tensors), "tensors['w']", "shape [3, 2]", "[2, 3]")


def test_integer_dtype_where_the_model_is_float() -> None:
    tensors = good_tensors()
    tensors["b"] = np.zeros(3, dtype=np.int32)
    rejected(check(tensors), "tensors['b']", "int32", "floating point")


# -- the values -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value(bad: float) -> None:
    tensors = good_tensors()
    tensors["b"][1] = bad
    verdict = check(tensors)
    rejected(verdict, "tensors['b']", "NaN or Inf")
    assert verdict.norm is None


def test_norm_over_the_bound() -> None:
    tensors = good_tensors()
    norm = float(np.linalg.norm(np.concatenate([tensors["w"].ravel(), tensors["b"].ravel()])))
    verdict = check(tensors, max_norm=norm / 2)
    rejected(verdict, "norm", "over the bound", f"{norm / 2:.6g}")
    assert verdict.norm == pytest.approx(norm, rel=1e-6)


def test_norm_overflow_from_huge_finite_values() -> None:
    tensors = good_tensors()
    tensors["w"] = np.full((2, 3), 1e30, dtype=np.float32)  # finite, but the squares overflow
    assert np.all(np.isfinite(tensors["w"]))
    verdict = check(tensors)
    rejected(verdict, "norm overflows")
    assert "NaN" not in (verdict.reason or "")


def test_header_problems_come_before_tensor_problems() -> None:
    tensors = good_tensors()
    del tensors["w"]
    rejected(check(tensors, fleet="fleet-b"), "fleet")
