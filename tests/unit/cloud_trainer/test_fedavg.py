"""FedAvg's streaming weighted mean: hand-computed values, input layouts, memory, errors."""

from __future__ import annotations

import importlib
import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.linalg.blas import saxpy

from cloud_trainer.strategies import FedAvgAccumulator, StrategyError, fedavg

# The package's `fedavg` attribute is the function, which shadows the submodule of that name.
fedavg_module = importlib.import_module("cloud_trainer.strategies.fedavg")


def f32(*values: Any) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def test_weighted_mean_by_hand() -> None:
    first = {"w": f32(1.0, 2.0), "b": f32([0.5])}
    second = {"w": f32(3.0, -2.0), "b": f32([1.5])}
    result = fedavg([(first, 1), (second, 3)])
    # w: (1·1 + 3·3) / 4 = 10/4 = 2.5      (1·2 + 3·(−2)) / 4 = −4/4 = −1
    # b: (1·0.5 + 3·1.5) / 4 = 5/4 = 1.25
    np.testing.assert_allclose(result["w"], [2.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(result["b"], [[1.25]], rtol=1e-6)
    assert list(result) == ["w", "b"]
    assert all(array.dtype == np.float32 for array in result.values())


def test_fractional_weights_by_hand() -> None:
    # staleness-scaled weights: 4 examples × 0.5 = 2.0, and 1 example fresh = 1.0
    # (2·6 + 1·(−3)) / 3 = 9/3 = 3
    result = fedavg([({"w": f32(6.0)}, 4 * 0.5), ({"w": f32(-3.0)}, 1.0)])
    np.testing.assert_allclose(result["w"], [3.0], rtol=1e-6)


def test_count_and_total_weight() -> None:
    accumulator = FedAvgAccumulator()
    assert (accumulator.count, accumulator.total_weight) == (0, 0.0)
    accumulator.add({"w": f32(1.0)}, 2)
    accumulator.add({"w": f32(1.0)}, 0.5)
    assert (accumulator.count, accumulator.total_weight) == (2, 2.5)


def test_result_leaves_the_accumulator_usable() -> None:
    accumulator = FedAvgAccumulator()
    accumulator.add({"w": f32(2.0)}, 1)
    first = accumulator.result()
    first["w"][0] = 99.0  # the caller owns the result
    accumulator.add({"w": f32(4.0)}, 1)
    np.testing.assert_array_equal(accumulator.result()["w"], [3.0])  # (2 + 4) / 2


def _layouts(values: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    """The same values as the wire and callers may hand them over."""
    raw = b"\0" + values.tobytes()  # one byte of padding: an unaligned, read-only view
    return {
        "float64": values.astype(np.float64),
        "float16 exact": values.astype(np.float16),
        "fortran order": np.asfortranarray(values),
        "strided view": np.repeat(values, 2, axis=1)[:, ::2],
        "unaligned read-only": np.frombuffer(raw, np.float32, values.size, 1).reshape(values.shape),
    }


@pytest.mark.parametrize("layout", list(_layouts(np.zeros((1, 1), np.float32))))
def test_any_layout_or_float_dtype_gives_the_float32_result(layout: str) -> None:
    values = np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -8.0]], dtype=np.float32)
    other = _layouts(values)[layout]
    assert not other.flags.c_contiguous or not other.flags.aligned or other.dtype != np.float32
    expected = fedavg([({"w": values}, 3), ({"w": values * 2}, 1)])
    result = fedavg([({"w": other}, 3), ({"w": values * 2}, 1)])
    np.testing.assert_array_equal(result["w"], expected["w"])


def test_integer_deltas_are_averaged_as_float32() -> None:
    # a counter such as num_batches_tracked travelling with the deltas: (1·3 + 1·4) / 2 = 3.5
    result = fedavg([({"n": np.array(3, np.int64)}, 1), ({"n": np.array(4, np.int64)}, 1)])
    assert result["n"].dtype == np.float32
    assert float(result["n"]) == 3.5


def test_empty_tensor_is_carried() -> None:
    result = fedavg([({"w": f32(1.0), "e": np.zeros((0, 3), np.float32)}, 1)])
    assert result["e"].shape == (0, 3)


def test_saxpy_updates_a_contiguous_float32_sum_in_place() -> None:
    # The assumption the hot path rests on (f2py passes a matching `y` straight to BLAS).
    y = f32(1.0, 2.0)
    out = saxpy(f32(10.0, 20.0), y, a=0.5)
    assert out is y
    np.testing.assert_array_equal(y, [6.0, 12.0])  # 1 + 0.5·10, 2 + 0.5·20


def test_a_saxpy_that_copies_is_still_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    def copying_saxpy(x: Any, y: Any, a: float) -> Any:
        return y + np.float32(a) * x

    monkeypatch.setattr(fedavg_module, "saxpy", copying_saxpy)
    result = fedavg([({"w": f32(1.0, 2.0)}, 1), ({"w": f32(3.0, 4.0)}, 1)])
    np.testing.assert_array_equal(result["w"], [2.0, 3.0])


def test_tensors_past_the_blas_length_go_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    updates = [({"w": rng.standard_normal(37).astype(np.float32)}, w) for w in (1, 2, 5)]
    expected = fedavg(updates)
    monkeypatch.setattr(fedavg_module, "_BLAS_CHUNK", 8)
    np.testing.assert_array_equal(fedavg(updates)["w"], expected["w"])
    with pytest.raises(StrategyError, match="NaN"):
        fedavg([({"w": np.where(np.arange(37) == 30, np.nan, 1.0)}, 1)])


def test_same_updates_same_order_give_identical_bits() -> None:
    rng = np.random.default_rng(1)
    updates = [
        ({"w": rng.standard_normal((64, 33)).astype(np.float32)}, float(rng.uniform(1, 100)))
        for _ in range(20)
    ]
    assert fedavg(updates)["w"].tobytes() == fedavg(updates)["w"].tobytes()


# -- memory ------------------------------------------------------------------------------------

TENSOR_BYTES = 1 << 20  # 1 MiB of float32


def _peak_growth(delta: dict[str, npt.NDArray[Any]], adds: int) -> int:
    """Peak traced bytes above the baseline while adding `delta` `adds` times."""
    accumulator = FedAvgAccumulator()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(adds):
            accumulator.add(delta, 3.0)
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def test_streaming_keeps_one_float32_sum_per_tensor() -> None:
    delta = {"w": np.ones(TENSOR_BYTES // 4, np.float32), "b": np.ones(7, np.float32)}
    few, many = _peak_growth(delta, 10), _peak_growth(delta, 200)
    # The sum itself (1 MiB) plus small change; nothing grows with the number of updates.
    assert few < TENSOR_BYTES * 1.25
    assert many < few + TENSOR_BYTES // 8


def test_converted_inputs_reuse_one_scratch_buffer() -> None:
    delta = {"w": np.ones(TENSOR_BYTES // 8, np.float64)}  # converted to float32: 0.5 MiB
    few, many = _peak_growth(delta, 10), _peak_growth(delta, 100)
    assert few < TENSOR_BYTES * 1.25  # sum + scratch, 0.5 MiB each
    assert many < few + TENSOR_BYTES // 8


# -- errors ------------------------------------------------------------------------------------


def test_nothing_added() -> None:
    with pytest.raises(StrategyError, match="no update was added"):
        FedAvgAccumulator().result()


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (0, r"weight must be > 0 and finite, got 0\.0"),
        (-2.5, r"got -2\.5"),
        (float("nan"), r"got nan"),
        (float("inf"), r"got inf"),
        (1e-50, r"does not fit a positive finite float32"),
        ("3", r"weight must be a real number, got '3'"),
        (True, r"weight must be a real number, got True"),
        (np.float32(0.0), r"got 0\.0"),
    ],
)
def test_bad_weights(weight: Any, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        FedAvgAccumulator().add({"w": f32(1.0)}, weight)


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"w": f32(1.0, 2.0, 3.0)}, r"tensors\['w'\]: shape \[3\] differs from \[2\]"),
        ({"v": f32(1.0, 2.0)}, r"missing \['w'\], unexpected \['v'\]"),
        ({"w": f32(1.0, 2.0), "x": f32(1.0)}, r"missing \[\], unexpected \['x'\]"),
        ({"w": f32(1.0, np.nan)}, r"tensors\['w'\]: holds NaN or infinity"),
        ({"w": np.array([1.0, -np.inf])}, r"tensors\['w'\]: holds NaN or infinity"),
        ({"w": np.array([1.0, 1e39])}, r"tensors\['w'\]: holds NaN or infinity"),  # over float32
        ({"w": np.array(["a", "b"])}, r"tensors\['w'\]: dtype <U1 is not a real number type"),
        ({}, r"tensor names differ"),
    ],
)
def test_rejected_update_names_the_problem_and_leaves_no_trace(
    delta: dict[str, Any], message: str
) -> None:
    accumulator = FedAvgAccumulator()
    accumulator.add({"w": f32(1.0, 2.0)}, 2)
    with pytest.raises(StrategyError, match=message):
        accumulator.add(delta, 5)
    assert (accumulator.count, accumulator.total_weight) == (1, 2.0)
    np.testing.assert_array_equal(accumulator.result()["w"], [1.0, 2.0])


def test_partly_bad_update_leaves_no_trace() -> None:
    accumulator = FedAvgAccumulator()
    accumulator.add({"a": f32(1.0), "z": f32(1.0)}, 1)
    with pytest.raises(StrategyError, match=r"tensors\['z'\]"):
        accumulator.add({"a": f32(5.0), "z": f32(np.inf)}, 1)  # "a" was fine
    np.testing.assert_array_equal(accumulator.result()["a"], [1.0])


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({}, r"an update holds no tensors"),
        ([1.0], r"an update must map tensor names to arrays"),
        ({1: f32(1.0)}, r"tensor names must be strings"),
    ],
)
def test_bad_first_update(delta: Any, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        FedAvgAccumulator().add(delta, 1)


def test_overflowing_sum_is_reported_by_result() -> None:
    accumulator = FedAvgAccumulator()
    accumulator.add({"w": f32(3e38)}, 2)  # 2 · 3e38 overflows float32
    with pytest.raises(StrategyError, match=r"tensors\['w'\]: the weighted mean is not finite"):
        accumulator.result()


def test_strategy_error_is_a_value_error_and_a_fleetlearn_error() -> None:
    from bus.errors import FleetlearnError

    assert issubclass(StrategyError, ValueError)
    assert issubclass(StrategyError, FleetlearnError)
