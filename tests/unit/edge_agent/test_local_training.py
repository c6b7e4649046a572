"""Local training: plain SGD equal to a reference loop, FedProx, clipping, stops and bad input."""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from bus.errors import ConfigError, ValidationError
from bus.protocol import TrainingConfig
from edge_agent.buffer import Window
from edge_agent.local_training import TrainingInterrupted, train_local
from edge_agent.privacy import PrivacyAccountant, global_norm
from models.params import apply_delta, get_parameters
from models.registry import build_model

torch.set_num_threads(2)


def blobs(rows: int = 256, dim: int = 8, seed: int = 0) -> Window:
    """Two well separated Gaussian blobs: a linearly separable binary problem."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    centres = np.where(labels[:, None] == 1, 2.0, -2.0)
    features = (centres + rng.normal(size=(rows, dim))).astype(np.float32)
    return Window(features, labels.astype(np.float32))


def model(name: str = "logreg", seed: int = 0, **config: Any) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, config or {"in_features": 8})


def reference(
    module: nn.Module, window: Window, config: TrainingConfig, seed: int
) -> dict[str, np.ndarray]:
    """A textbook loop: optim.SGD, the same permutations, the FedProx term through autograd."""
    net = copy.deepcopy(module)
    anchors = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate)
    x = torch.from_numpy(window.features)
    assert window.labels is not None
    y = torch.from_numpy(window.labels.astype(np.int64))
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(config.epochs):
        for index in torch.split(torch.randperm(len(y), generator=order), config.batch_size):
            opt.zero_grad()
            loss = F.cross_entropy(net(x[index]), y[index])
            prox = sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchors, strict=True))
            torch.autograd.backward(loss + config.fedprox_mu / 2 * prox)
            opt.step()
    return get_parameters(net)


def assert_params_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)


def test_loss_decreases_on_a_separable_problem() -> None:
    config = TrainingConfig(epochs=3, batch_size=16, learning_rate=0.1)
    result = train_local(model(), blobs(), config)
    metrics = result.metrics
    assert metrics["loss_after"] < 0.5 * metrics["loss_before"]
    assert metrics["accuracy_after"] > 0.95
    assert result.num_examples == 256
    assert result.steps == 3 * 16
    assert set(metrics) == {
        "loss_before",
        "loss_after",
        "accuracy_after",
        "seconds",
        "samples_per_s",
        "update_norm",
    }
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["update_norm"] == pytest.approx(global_norm(result.delta), rel=1e-6)
    assert result.privacy is None


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_delta_is_trained_minus_base_as_a_plain_sgd_loop(mu: float) -> None:
    module, window = model(), blobs(rows=100)
    config = TrainingConfig(epochs=2, batch_size=32, learning_rate=0.05, fedprox_mu=mu)
    result = train_local(module, window, config, seed=5)
    assert result.steps == 2 * 4  # the last batch of each epoch is partial
    trained = apply_delta(get_parameters(module), result.delta)
    assert_params_close(trained, reference(module, window, config, seed=5))


def test_max_steps_is_honoured() -> None:
    config = TrainingConfig(epochs=5, max_steps=3, batch_size=32)
    assert train_local(model(), blobs(), config).steps == 3


def test_callers_module_and_global_state_are_unchanged() -> None:
    module = model()
    module.eval()
    before = get_parameters(module)
    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    result = train_local(module, blobs(), TrainingConfig(epochs=2, learning_rate=0.1))
    assert global_norm(result.delta) > 0
    assert_params_close(get_parameters(module), before)
    assert not module.training
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads


def test_fedprox_with_a_large_mu_keeps_the_update_near_the_base() -> None:
    plain = TrainingConfig(epochs=4, batch_size=16, learning_rate=0.1)
    prox = plain.model_copy(update={"fedprox_mu": 10.0})  # lr·mu = 1: back to base each step
    free = train_local(model(), blobs(), plain).metrics["update_norm"]
    held = train_local(model(), blobs(), prox).metrics["update_norm"]
    assert held < 0.2 * free


def test_clip_bounds_the_update_norm() -> None:
    config = TrainingConfig(epochs=2, learning_rate=0.1, clip_norm=0.05, noise_multiplier=0.0)
    result = train_local(model(), blobs(), config)
    assert result.metrics["update_norm"] > 0.05  # the norm before clipping
    assert global_norm(result.delta) == pytest.approx(0.05, rel=1e-5)


def test_noised_update_is_accounted(tmp_path: Path) -> None:
    accountant = PrivacyAccountant(tmp_path / "privacy.json", delta=1e-5)
    config = TrainingConfig(learning_rate=0.1, clip_norm=0.05, noise_multiplier=1.0)
    first = train_local(model(), blobs(), config, accountant=accountant, noise_seed=3)
    again = train_local(model(), blobs(), config, noise_seed=3)
    assert first.privacy is not None
    assert first.privacy.epsilon == pytest.approx(5.298525912188081)
    assert accountant.releases == 1
    assert again.privacy is None  # no accountant given
    assert_params_close(first.delta, again.delta)  # a noise seed makes the noise repeatable
    assert global_norm(first.delta) > 0.05  # noise on top of the clipped update


def test_noise_without_clip_norm_is_refused() -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        train_local(model(), blobs(), TrainingConfig(noise_multiplier=1.0))


class StopAfter(threading.Event):
    """An event that reports set from its `calls`-th check on."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0


def test_stop_event_interrupts_between_steps() -> None:
    with pytest.raises(TrainingInterrupted) as caught:
        train_local(model(), blobs(), TrainingConfig(epochs=5), stop=StopAfter(3))
    assert caught.value.steps == 3
    already = threading.Event()
    already.set()
    with pytest.raises(TrainingInterrupted):
        train_local(model(), blobs(), TrainingConfig(), stop=already)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "no labels"),
        (np.array([0.0, 0.5, 1.0, 1.0], dtype=np.float32), "non-negative integers"),
        (np.array([0.0, -1.0, 1.0, 1.0], dtype=np.float32), "non-negative integers"),
        (np.array([0.0, np.nan, 1.0, 1.0], dtype=np.float32), "finite"),
        (np.array([0.0, 1.0, 2.0, 1.0], dtype=np.float32), "2 classes"),
        (np.array([0.0, 1.0], dtype=np.float32), "shape"),
    ],
)
def test_bad_labels_are_rejected(labels: np.ndarray | None, message: str) -> None:
    window = Window(np.zeros((4, 8), dtype=np.float32), labels)
    with pytest.raises(ValidationError, match=message) as caught:
        train_local(model(), window, TrainingConfig())
    assert caught.value.where == "window.labels"


def test_bad_features_are_rejected() -> None:
    labels = np.zeros(4, dtype=np.float32)
    wrong_width = Window(np.zeros((4, 5), dtype=np.float32), labels)
    with pytest.raises(ValidationError, match="rejects rows"):
        train_local(model(), wrong_width, TrainingConfig())
    with pytest.raises(ValidationError, match="NaN"):
        train_local(
            model(), Window(np.full((4, 8), np.nan, dtype=np.float32), labels), TrainingConfig()
        )
    with pytest.raises(ValidationError, match="input_shape"):
        train_local(model(), blobs(), TrainingConfig(), input_shape=(3, 3))


def test_input_shape_reshapes_rows_for_the_sensor_cnn() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6 * 16)).astype(np.float32)
    labels = rng.integers(0, 3, 40).astype(np.float32)
    net = model("cnn1d", in_channels=6, num_classes=3, channels=(4,), kernel_size=3)
    config = TrainingConfig(batch_size=8, learning_rate=0.05)
    result = train_local(net, Window(features, labels), config, input_shape=(6, 16))
    assert result.steps == 5
    counter = result.delta["features.1.num_batches_tracked"]
    assert counter.dtype == np.int64
    assert int(counter) == 5  # non-float entries carry the new value
    assert np.any(result.delta["features.1.running_mean"] != 0)


def test_text_model_gets_token_ids() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(32, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 32).astype(np.float32)
    net = model("textclf", vocab_size=20, embed_dim=4)
    result = train_local(net, Window(tokens, labels), TrainingConfig(learning_rate=0.5))
    assert np.any(result.delta["embedding.weight"] != 0)
    with pytest.raises(ValidationError, match="token ids"):
        train_local(net, Window(tokens + 0.5, labels), TrainingConfig())


def test_same_seed_same_delta() -> None:
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.1)
    module = model("mlp", in_features=8, hidden=(8,), dropout=0.2)
    first = train_local(module, blobs(), config, seed=1)
    second = train_local(module, blobs(), config, seed=1)
    other = train_local(module, blobs(), config, seed=2)
    for name in first.delta:
        np.testing.assert_array_equal(first.delta[name], second.delta[name])
    assert any(not np.array_equal(first.delta[n], other.delta[n]) for n in first.delta)


def test_a_release_without_noise_voids_the_guarantee_for_good(tmp_path: Path) -> None:
    accountant = PrivacyAccountant(tmp_path / "privacy.json", delta=1e-5)
    plain = train_local(model(), blobs(), TrainingConfig(epochs=1), accountant=accountant)
    assert plain.privacy is None
    noised = TrainingConfig(epochs=1, clip_norm=1.0, noise_multiplier=1.0)
    later = train_local(model(), blobs(), noised, accountant=accountant, noise_seed=1)
    assert later.privacy is None  # the earlier un-noised update already leaked
    fresh = PrivacyAccountant(tmp_path / "other.json", delta=1e-5)
    first = train_local(model(), blobs(), noised, accountant=fresh, noise_seed=1)
    assert first.privacy is not None
    assert math.isfinite(first.privacy.epsilon)
