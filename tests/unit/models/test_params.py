"""Parameters as an ordered name → array mapping: round trips, the wire, deltas, strict errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bus.errors import ValidationError
from bus.protocol import CodecSpec, ModelUpdate, decode_message, encode_update
from models.datasets import load
from models.params import apply_delta, get_parameters, parameter_delta, set_parameters
from models.registry import available_models, build_model
from models.train import fit, predict

torch.set_num_threads(2)

CONFIGS: dict[str, dict[str, Any]] = {
    "logreg": {"in_features": 30},
    "mlp": {"in_features": 30},
    "cnn1d": {},
    "cnn": {"input_size": 8, "batch_norm": True},
    "textclf": {"vocab_size": 100},
}


def fresh(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, CONFIGS[name])


def bn_cnn_trained_on_digits() -> tuple[nn.Module, np.ndarray]:
    """A CNN whose BatchNorm buffers have moved: running stats and the int64 step counter."""
    digits = load("digits").subset(np.arange(300))
    model = fresh("cnn", 0)
    fit(model, digits.x, digits.y, epochs=1, batch_size=50, lr=0.01, seed=0)
    return model, digits.x[:20]


def update_header() -> ModelUpdate:
    return ModelUpdate(
        fleet="farm",
        device_id="pi-01",
        round_id="r-1",
        model="cnn",
        base_version=1,
        num_examples=300,
        codec=CodecSpec(name="fp32"),
    )


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn1d", "cnn", "textclf"])
def test_names_order_and_dtypes_follow_the_state_dict(name: str) -> None:
    model = fresh(name, 0)
    params = get_parameters(model)
    state = model.state_dict()
    assert list(params) == list(state)
    for key, array in params.items():
        assert array.flags.c_contiguous
        assert array.shape == tuple(state[key].shape)
        expected = np.float32 if state[key].is_floating_point() else np.int64
        assert array.dtype == expected, key


def test_every_registered_model_is_covered() -> None:
    assert sorted(CONFIGS) == sorted(available_models())


def test_batch_norm_buffers_travel_and_the_counter_stays_int64() -> None:
    model, _ = bn_cnn_trained_on_digits()
    params = get_parameters(model)
    assert params["features.1.num_batches_tracked"].dtype == np.int64
    assert int(params["features.1.num_batches_tracked"]) == 6  # 300 rows / 50 per batch
    assert params["features.1.running_var"].dtype == np.float32
    assert not np.allclose(params["features.1.running_mean"], 0)


def test_parameters_are_copies() -> None:
    model = fresh("mlp", 0)
    params = get_parameters(model)
    params["head.bias"][:] = 42
    assert not torch.any(model.state_dict()["head.bias"] == 42)


@pytest.mark.parametrize("name", CONFIGS)
def test_get_set_round_trip_is_exact(name: str) -> None:
    source, target = fresh(name, 0), fresh(name, 1)
    params = get_parameters(source)
    set_parameters(target, params)
    after = get_parameters(target)
    assert list(after) == list(params)
    for key in params:
        np.testing.assert_array_equal(after[key], params[key], strict=True)


def test_set_parameters_reproduces_the_model_outputs() -> None:
    model, images = bn_cnn_trained_on_digits()
    copy = fresh("cnn", 5)
    set_parameters(copy, get_parameters(model))
    np.testing.assert_array_equal(predict(copy, images), predict(model, images))


def test_a_float64_model_travels_as_float32_and_accepts_float32() -> None:
    model = fresh("logreg", 0).double()
    params = get_parameters(model)
    assert {a.dtype for a in params.values()} == {np.dtype(np.float32)}
    set_parameters(model, params)
    assert model.state_dict()["linear.weight"].dtype == torch.float64


def test_parameters_survive_the_wire_bit_exactly() -> None:
    model, images = bn_cnn_trained_on_digits()
    params = get_parameters(model)
    data, _ = encode_update(update_header(), params)
    decoded = decode_message(data).tensors
    assert list(decoded) == list(params)
    for key in params:
        np.testing.assert_array_equal(decoded[key], params[key], strict=True)
    copy = fresh("cnn", 3)
    set_parameters(copy, decoded)  # read-only views into the message bytes
    np.testing.assert_array_equal(predict(copy, images), predict(model, images))


def test_a_delta_over_the_wire_rebuilds_the_new_model() -> None:
    base_model, images = bn_cnn_trained_on_digits()
    base = get_parameters(base_model)
    digits = load("digits").subset(np.arange(300, 500))
    fit(base_model, digits.x, digits.y, epochs=1, batch_size=50, lr=0.01, seed=1)
    new = get_parameters(base_model)
    delta = parameter_delta(new, base)
    assert int(delta["features.1.num_batches_tracked"]) == 10  # the new counter, not 4
    data, _ = encode_update(update_header(), delta)
    rebuilt = apply_delta(base, decode_message(data).tensors)
    assert list(rebuilt) == list(base)
    for key in new:
        np.testing.assert_allclose(rebuilt[key], new[key], rtol=0, atol=1e-6)
    copy = fresh("cnn", 3)
    set_parameters(copy, rebuilt)
    np.testing.assert_allclose(predict(copy, images), predict(base_model, images), atol=1e-4)


def test_delta_and_apply_with_literal_values() -> None:
    base = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3)}
    new = {"w": np.array([1.5, 1.0], np.float32), "n": np.array(5)}
    delta = parameter_delta(new, base)
    np.testing.assert_array_equal(delta["w"], np.array([0.5, -1.0], np.float32), strict=True)
    assert int(delta["n"]) == 5
    again = apply_delta(base, delta)
    np.testing.assert_array_equal(again["w"], new["w"], strict=True)
    assert int(again["n"]) == 5


@pytest.mark.parametrize(
    ("new", "match"),
    [
        ({"w": np.zeros(2, np.float32)}, r"new: missing \['n'\]"),
        ({"w": np.zeros(3, np.float32), "n": np.array(1)}, r"params\['w'\]: shapes differ"),
        ({"w": np.zeros(2, np.int64), "n": np.array(1)}, r"params\['w'\]: dtypes differ"),
    ],
)
def test_delta_rejects_mismatched_mappings(new: dict[str, np.ndarray], match: str) -> None:
    base = {"w": np.zeros(2, np.float32), "n": np.array(3)}
    with pytest.raises(ValidationError, match=match):
        parameter_delta(new, base)


def wrong(params: dict[str, np.ndarray], change: str) -> dict[str, Any]:
    bad: dict[str, Any] = dict(params)
    if change == "missing":
        del bad["head.bias"]
    elif change == "extra":
        bad["head.scale"] = np.ones(1, np.float32)
    elif change == "shape":
        bad["head.weight"] = bad["head.weight"].T.copy()
    elif change == "float64":
        bad["head.weight"] = bad["head.weight"].astype(np.float64)
    elif change == "counter":
        bad["features.1.num_batches_tracked"] = np.array(1.0, np.float32)
    elif change == "list":
        bad["head.bias"] = bad["head.bias"].tolist()
    return bad


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("missing", r"params: missing \['head.bias'\]"),
        ("extra", r"params: unexpected \['head.scale'\]"),
        ("shape", r"params\['head.weight'\]: shape \[128, 10\] != expected \[10, 128\]"),
        ("float64", r"params\['head.weight'\]: dtype float64 != expected float32"),
        ("counter", r"params\['features.1.num_batches_tracked'\]: dtype float32 != expected int64"),
        ("list", r"params\['head.bias'\]: must be a numpy array"),
    ],
)
def test_set_parameters_is_strict_and_all_or_nothing(change: str, match: str) -> None:
    model = fresh("cnn", 0)
    before = get_parameters(model)
    other = get_parameters(fresh("cnn", 1))
    with pytest.raises(ValidationError, match=match):
        set_parameters(model, wrong(other, change))
    after = get_parameters(model)
    assert all(np.array_equal(after[key], before[key]) for key in before)


def test_hash_in_a_tensor_name_is_refused() -> None:
    model = nn.Linear(2, 2)
    model.register_buffer("scale#1", torch.ones(1))
    with pytest.raises(ValidationError, match=r"params\['scale#1'\]: '#' is reserved"):
        get_parameters(model)
