"""Server optimizers (Reddi et al. 2021): hand-computed steps, dtypes, purity, state and errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_trainer.strategies import (
    Arrays,
    FedAdagradOptimizer,
    FedAdamOptimizer,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    FedYogiOptimizer,
    ServerOptimizer,
    StrategyError,
)

# float32 arithmetic against float64 hand values: a handful of roundings of 2^-24 each.
RTOL = 1e-6


def f32(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def two_steps(optimizer: ServerOptimizer) -> tuple[Arrays, Arrays, Arrays]:
    """From x = [0, 0] (no cancellation to blur float32 rounding): Δ₁ = [1, −2], then
    Δ₂ = [1, 0]. Returns (x₁, x₂, state₂)."""
    x1, state1 = optimizer.step({"w": f32(0, 0)}, {"w": f32(1, -2)}, {})
    x2, state2 = optimizer.step(x1, {"w": f32(1, 0)}, state1)
    return x1, x2, state2


def test_fedavg_step_by_hand() -> None:
    model, state = FedAvgOptimizer(server_lr=0.5).step({"w": f32(1, 2)}, {"w": f32(2, -4)}, {})
    np.testing.assert_array_equal(model["w"], [2.0, 0.0])  # [1 + 0.5·2, 2 + 0.5·(−4)]
    assert state == {}


def test_fedavgm_by_hand() -> None:
    x1, x2, state = two_steps(FedAvgMOptimizer(server_lr=0.5, momentum=0.9))
    # step 1: m = [1, −2];  x = 0.5·m = [0.5, −1]
    np.testing.assert_allclose(x1["w"], [0.5, -1.0], rtol=RTOL)
    # step 2: m = 0.9·[1, −2] + [1, 0] = [1.9, −1.8];  x = [0.5 + 0.95, −1 − 0.9]
    np.testing.assert_allclose(x2["w"], [1.45, -1.9], rtol=RTOL)
    np.testing.assert_allclose(state["m/w"], [1.9, -1.8], rtol=RTOL)


def test_fedavgm_without_momentum_is_fedavg_and_refuses_foreign_state() -> None:
    model, delta = {"w": f32(1, 2)}, {"w": f32(2, -4)}
    plain, _ = FedAvgOptimizer(server_lr=0.5).step(model, delta, {})
    moved, state = FedAvgMOptimizer(server_lr=0.5, momentum=0.0).step(model, delta, {})
    np.testing.assert_array_equal(moved["w"], plain["w"])
    with pytest.raises(StrategyError, match="does not fit"):
        FedAvgMOptimizer().step(model, delta, {"v/w": f32(1, 1)})
    with pytest.raises(StrategyError, match="momentum"):
        FedAvgMOptimizer(momentum=1.0)
    assert set(state) == {"m/w"}


def test_fedadagrad_by_hand() -> None:
    x1, x2, state = two_steps(FedAdagradOptimizer(server_lr=1.0, beta1=0.9, tau=0.1))
    # step 1: m = 0.1·[1, −2] = [0.1, −0.2];  v = [1, 4];  √v + τ = [1.1, 2.1]
    np.testing.assert_allclose(x1["w"], [0.1 / 1.1, -0.2 / 2.1], rtol=RTOL)
    # step 2: m = 0.9·[0.1, −0.2] + 0.1·[1, 0] = [0.19, −0.18];  v = [1+1, 4+0] = [2, 4]
    #         √v + τ = [1.5142136, 2.1]
    np.testing.assert_allclose(
        x2["w"], [0.1 / 1.1 + 0.19 / 1.5142136, -0.2 / 2.1 - 0.18 / 2.1], rtol=RTOL
    )
    np.testing.assert_allclose(state["m/w"], [0.19, -0.18], rtol=RTOL)
    np.testing.assert_allclose(state["v/w"], [2.0, 4.0], rtol=RTOL)


def test_fedadam_by_hand() -> None:
    x1, x2, state = two_steps(FedAdamOptimizer(server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1))
    # step 1: m = [0.1, −0.2];  v = 0.01·[1, 4] = [0.01, 0.04];  √v + τ = [0.2, 0.3]
    np.testing.assert_allclose(x1["w"], [0.1 / 0.2, -0.2 / 0.3], rtol=RTOL)
    # step 2: m = [0.19, −0.18];  v = 0.99·[0.01, 0.04] + 0.01·[1, 0] = [0.0199, 0.0396]
    #         √v + τ = [0.14106736 + 0.1, 0.19899749 + 0.1]
    np.testing.assert_allclose(
        x2["w"],
        [0.5 + 0.19 / 0.24106736, -0.2 / 0.3 - 0.18 / 0.29899749],
        rtol=RTOL,
    )
    np.testing.assert_allclose(state["m/w"], [0.19, -0.18], rtol=RTOL)
    np.testing.assert_allclose(state["v/w"], [0.0199, 0.0396], rtol=RTOL)


def test_fedyogi_by_hand() -> None:
    x1, x2, state = two_steps(FedYogiOptimizer(server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1))
    # step 1: v = 0 − 0.01·Δ²·sign(0 − Δ²) = 0.01·[1, 4] = [0.01, 0.04]: the same as FedAdam
    np.testing.assert_allclose(x1["w"], [0.1 / 0.2, -0.2 / 0.3], rtol=RTOL)
    # step 2: Δ² = [1, 0];  v − Δ² = [−0.99, 0.04] → sign [−1, +1]
    #         v = [0.01 + 0.01·1, 0.04 − 0.01·0] = [0.02, 0.04];  √v + τ = [0.14142136 + 0.1, 0.3]
    np.testing.assert_allclose(
        x2["w"], [0.5 + 0.19 / 0.24142136, -0.2 / 0.3 - 0.18 / 0.3], rtol=RTOL
    )
    np.testing.assert_allclose(state["v/w"], [0.02, 0.04], rtol=RTOL)


def test_fedyogi_shrinks_v_while_it_is_above_delta_squared() -> None:
    state = {"m/w": f32(0.0), "v/w": f32(4.0)}
    _, new_state = FedYogiOptimizer(server_lr=1.0, beta2=0.9).step(
        {"w": f32(0)}, {"w": f32(1)}, state
    )
    # v − Δ² = 3 > 0 → v = 4 − 0.1·1·1 = 3.9 (Adam would give 0.9·4 + 0.1·1 = 3.7)
    np.testing.assert_allclose(new_state["v/w"], [3.9], rtol=RTOL)


ALL = [
    FedAvgOptimizer(server_lr=1.0),
    FedAdagradOptimizer(server_lr=0.1),
    FedAdamOptimizer(server_lr=0.1),
    FedYogiOptimizer(server_lr=0.1),
]


def _model() -> dict[str, npt.NDArray[Any]]:
    return {
        "w": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32),
        "half": np.array([1.0, 2.0], np.float16),
        "double": np.array([1.0, 1e-9], np.float64),
        "scale": np.array(2.0, np.float32),  # 0-d
        "bn.num_batches_tracked": np.array(7, np.int64),
    }


def _delta() -> dict[str, npt.NDArray[Any]]:
    return {
        "w": np.array([[0.1, 0.2], [-0.3, 0.0]], np.float32),
        "half": np.array([0.5, -0.5], np.float32),
        "double": np.array([1e-3, -1e-3], np.float32),
        "scale": np.array(0.5, np.float32),
        "bn.num_batches_tracked": np.array(3.0, np.float32),  # sent along, ignored
    }


@pytest.mark.parametrize("optimizer", ALL, ids=lambda o: type(o).__name__)
def test_every_model_tensor_keeps_its_dtype_and_non_floats_their_value(
    optimizer: ServerOptimizer,
) -> None:
    model, state = optimizer.step(_model(), _delta(), {})
    assert all(isinstance(array, np.ndarray) for array in [*model.values(), *state.values()])
    assert {name: array.dtype for name, array in model.items()} == {
        name: array.dtype for name, array in _model().items()
    }
    assert list(model) == list(_model())
    assert int(model["bn.num_batches_tracked"]) == 7
    assert not np.array_equal(model["w"], _model()["w"])


@pytest.mark.parametrize("optimizer", ALL, ids=lambda o: type(o).__name__)
def test_steps_are_pure(optimizer: ServerOptimizer) -> None:
    model, delta = _model(), _delta()
    _, state = optimizer.step(model, delta, {})
    saved_state = {name: array.copy() for name, array in state.items()}
    new_model, new_state = optimizer.step(model, delta, state)
    for before, after in [(_model(), model), (_delta(), delta), (saved_state, state)]:
        assert before.keys() == after.keys()
        for name in before:
            np.testing.assert_array_equal(after[name], before[name])
    inputs = [*model.values(), *delta.values(), *state.values()]
    for output in [*new_model.values(), *new_state.values()]:
        assert not any(np.shares_memory(output, array) for array in inputs)


@pytest.mark.parametrize("optimizer", ALL[1:], ids=lambda o: type(o).__name__)
def test_state_is_flat_float32_and_resumes_exactly(optimizer: ServerOptimizer) -> None:
    model, state = optimizer.step(_model(), _delta(), {})
    float_names = ["w", "half", "double", "scale"]
    assert sorted(state) == sorted(f"{kind}/{name}" for name in float_names for kind in "mv")
    assert all(array.dtype == np.float32 for array in state.values())
    # A checkpoint round trip (bytes and back) continues bit for bit.
    restored = {
        name: np.frombuffer(array.tobytes(), np.float32).reshape(array.shape)
        for name, array in state.items()
    }
    straight, _ = optimizer.step(model, _delta(), state)
    resumed, _ = optimizer.step(model, _delta(), restored)
    assert all(straight[name].tobytes() == resumed[name].tobytes() for name in straight)


def test_adaptive_first_step_size_is_about_lr_times_the_sign() -> None:
    # With m, v from 0: step = η(1−β1)Δ / (√(1−β2)|Δ| + τ) ≈ η·0.1/0.1 = η for |Δ| ≫ τ/0.1.
    model, _ = FedAdamOptimizer(server_lr=0.01).step({"w": f32(0, 0)}, {"w": f32(5, -5)}, {})
    np.testing.assert_allclose(model["w"], [0.01 * 0.5 / 0.501, -0.01 * 0.5 / 0.501], rtol=RTOL)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({}, r"tensors\['w'\]: the model has it but the delta does not"),
        ({"w": f32(1, 2), "extra": f32(1)}, r"delta has tensors the model lacks: \['extra'\]"),
        ({"w": f32(1, 2, 3)}, r"tensors\['w'\]: delta shape \[3\] differs from the model's \[2\]"),
        ({"w": f32(1, np.nan)}, r"tensors\['w'\]: holds NaN or infinity"),
    ],
)
@pytest.mark.parametrize("optimizer", ALL, ids=lambda o: type(o).__name__)
def test_bad_deltas(optimizer: ServerOptimizer, delta: dict[str, Any], message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        optimizer.step({"w": f32(0, 0)}, delta, {})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"m/w": f32(0, 0)}, r"server state does not fit the model: missing \['v/w'\]"),
        (
            {"m/w": f32(0, 0), "v/w": f32(0, 0), "m/old": f32(0)},
            r"unexpected \['m/old'\]",
        ),
        ({"m/w": f32(0, 0), "v/w": f32(0)}, r"state\['v/w'\]: shape \[1\] differs"),
        ({"m/w": f32(0, 0), "v/w": f32(np.inf, 0)}, r"state\['v/w'\]: holds NaN or infinity"),
        ({"m/w": f32(0, 0), "v/w": np.array([0, 0])}, r"state\['v/w'\]: dtype int64"),
    ],
)
def test_bad_state(state: dict[str, Any], message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        FedAdamOptimizer(server_lr=0.1).step({"w": f32(0, 0)}, {"w": f32(1, 1)}, state)


def test_fedavg_refuses_state_it_would_drop() -> None:
    with pytest.raises(StrategyError, match=r"FedAvg keeps no server state, got entries \['m/w'"):
        FedAvgOptimizer().step({"w": f32(0)}, {"w": f32(1)}, {"m/w": f32(0), "v/w": f32(0)})


def test_a_step_that_overflows_is_refused() -> None:
    with pytest.raises(StrategyError, match=r"tensors\['w'\]: the server step made it non-finite"):
        FedAvgOptimizer(server_lr=10.0).step({"w": f32(3e38)}, {"w": f32(3e38)}, {})


def test_a_second_moment_that_overflows_is_refused() -> None:
    with pytest.raises(StrategyError, match=r"tensors\['w'\]: the second moment v overflowed"):
        FedAdagradOptimizer(server_lr=0.1).step({"w": f32(0)}, {"w": f32(1e20)}, {})  # Δ² = 1e40


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FedAvgOptimizer(server_lr=0.0), r"server_lr must be > 0\.0, got 0\.0"),
        (lambda: FedAvgOptimizer(server_lr=math.inf), r"server_lr must be > 0\.0, got inf"),
        (lambda: FedAdamOptimizer(server_lr=0.1, beta1=1.0), r"beta1 must be in \[0\.0, 1\.0\)"),
        (lambda: FedYogiOptimizer(server_lr=0.1, beta2=-0.1), r"beta2 must be in \[0\.0, 1\.0\)"),
        (lambda: FedAdagradOptimizer(server_lr=0.1, tau=0.0), r"tau must be > 0\.0, got 0\.0"),
    ],
)
def test_bad_hyperparameters(build: Any, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build()
