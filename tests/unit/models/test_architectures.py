"""The architecture registry: typed configs, shapes, and each model learning its real data set."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bus.errors import ConfigError, ValidationError
from models import registry
from models.architectures import CNNConfig, LogRegConfig, MLPConfig
from models.config import ArchConfig
from models.datasets import Dataset, load, standardize, train_test_split
from models.registry import available_models, build_model, get_spec, register
from models.train import accuracy, fit, predict

torch.set_num_threads(2)

# one input of each kind, with the config that fits it
SAMPLES: dict[str, tuple[dict[str, Any], tuple[int, ...], torch.dtype]] = {
    "logreg": ({"in_features": 30}, (30,), torch.float32),
    "mlp": ({"in_features": 30, "hidden": [16]}, (30,), torch.float32),
    "cnn1d": ({}, (6, 100), torch.float32),
    "cnn": ({"input_size": 8}, (1, 8, 8), torch.float32),
    "textclf": ({"vocab_size": 50}, (32,), torch.int64),
}


def sample_input(name: str, batch: int) -> torch.Tensor:
    _, shape, dtype = SAMPLES[name]
    generator = torch.Generator().manual_seed(batch)
    if dtype == torch.int64:
        return torch.randint(0, 50, (batch, *shape), generator=generator)
    return torch.rand((batch, *shape), generator=generator)


def test_the_five_architectures_are_registered_with_their_input_kinds() -> None:
    assert available_models() == ["logreg", "mlp", "cnn1d", "cnn", "textclf"]
    kinds = {name: get_spec(name).input_kind for name in available_models()}
    assert kinds == {
        "logreg": "tabular",
        "mlp": "tabular",
        "cnn1d": "sensor",
        "cnn": "image",
        "textclf": "text",
    }


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("batch", [1, 5])
def test_every_model_gives_one_row_of_logits_per_input(name: str, batch: int) -> None:
    config = SAMPLES[name][0]
    model = build_model(name, config).eval()
    classes = get_spec(name).parse(config).num_classes
    assert model(sample_input(name, batch)).shape == (batch, classes)


def test_config_may_be_typed_or_a_mapping() -> None:
    typed = build_model("mlp", MLPConfig(in_features=4, hidden=(3,)))
    mapped = build_model("mlp", {"in_features": 4, "hidden": [3]})
    assert [p.shape for p in typed.parameters()] == [p.shape for p in mapped.parameters()]


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("mlp", {"in_features": 4, "hiden": [3]}, r"models\['mlp'\]\.config\.hiden: Extra"),
        ("mlp", {}, r"in_features: Field required"),
        ("logreg", {"in_features": 0}, r"in_features: .*greater than or equal to 1"),
        ("mlp", {"in_features": 4, "dropout": 1.0}, r"dropout"),
        ("cnn", {"input_size": 3}, r"input_size"),
        ("textclf", {"vocab_size": 1}, r"vocab_size"),
        ("cnn", LogRegConfig(in_features=3), r"expected a CNNConfig or a mapping, got a LogReg"),
        ("cnn", [("input_size", 8)], r"expected a mapping, got a list"),
    ],
)
def test_bad_configs_name_the_field(name: str, config: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, config)


def test_configs_are_frozen_and_documented() -> None:
    config = CNNConfig()
    with pytest.raises(Exception, match="frozen"):
        config.input_size = 8  # type: ignore[misc]
    for name in available_models():
        fields = get_spec(name).config_type.model_fields
        assert all(field.description for field in fields.values()), name


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet'; available: logreg, mlp"):
        build_model("resnet", {})


def test_register_adds_a_model_and_refuses_duplicates_and_bad_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class TinyConfig(ArchConfig):
        width: int = 2

    def build_tiny(config: TinyConfig) -> nn.Module:
        return nn.Linear(config.width, 2)

    spec = register("tiny", TinyConfig, build_tiny, "tabular")
    assert get_spec("tiny") is spec
    assert "tiny" in available_models()
    assert isinstance(build_model("tiny", {"width": 3}), nn.Linear)
    with pytest.raises(ConfigError, match="already registered"):
        register("mlp", TinyConfig, build_tiny, "tabular")
    with pytest.raises(ConfigError, match="must match"):
        register("Bad Name", TinyConfig, build_tiny, "tabular")
    with pytest.raises(ConfigError, match="input_kind 'audio'"):
        register("tiny2", TinyConfig, build_tiny, "audio")  # type: ignore[arg-type]


def test_text_model_ignores_padding() -> None:
    model = build_model("textclf", {"vocab_size": 50}).eval()
    short = torch.tensor([[7, 9, 3, 0]])
    longer = torch.tensor([[7, 9, 3, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(model(short), model(longer), rtol=0, atol=0)
    only_padding = model(torch.zeros((1, 8), dtype=torch.int64))
    head = model.head
    assert isinstance(head, nn.Linear)
    torch.testing.assert_close(only_padding[0], head.bias.detach())


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_model_exports_to_onnx_with_a_dynamic_batch(name: str, tmp_path: Path) -> None:
    model = build_model(name, SAMPLES[name][0]).eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            model,
            (sample_input(name, 1),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    batch = sample_input(name, 6)
    (logits,) = ort.InferenceSession(str(path)).run(None, {"input": batch.numpy()})
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)


# --- learning on the real data sets ------------------------------------------------------------


def majority_rate(ds: Dataset) -> float:
    return float(np.bincount(ds.y).max() / len(ds))


def split(name: str, *, by_group: bool = False, scale: bool = False) -> tuple[Dataset, Dataset]:
    train, test = train_test_split(load(name), test_fraction=0.2, seed=0, by_group=by_group)
    return standardize(train, test) if scale else (train, test)


def train_and_score(
    name: str, config: Mapping[str, Any], train: Dataset, test: Dataset, **options: Any
) -> float:
    torch.manual_seed(0)
    model = build_model(name, config)
    losses = fit(model, train.x, train.y, seed=0, **options)
    assert losses[-1] < losses[0]
    return accuracy(model, test.x, test.y)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_tabular_models_learn_breast_cancer(name: str) -> None:
    train, test = split("breast_cancer", scale=True)
    # chance: 2 classes, and the majority class (benign) is ≈ 0.63 of the held-out rows
    assert majority_rate(test) < 0.7
    score = train_and_score(
        name, {"in_features": 30}, train, test, epochs=15, batch_size=32, lr=0.01
    )
    assert score >= 0.92


def test_cnn_learns_sklearn_digits() -> None:
    train, test = split("digits")
    # chance: 10 balanced classes, 0.1
    assert majority_rate(test) < 0.12
    score = train_and_score("cnn", {"input_size": 8}, train, test, epochs=5, batch_size=32, lr=0.01)
    assert score >= 0.85


def test_cnn_learns_a_mnist_subset() -> None:
    train, test = split("mnist")
    rows = np.random.default_rng(0).permutation(len(train))[:1000]  # the file is sorted by label
    train = train.subset(rows)
    # chance: 10 classes, about 0.1 each
    assert majority_rate(test) < 0.15
    score = train_and_score("cnn", {}, train, test, epochs=4, batch_size=32, lr=0.003)
    assert score >= 0.85


def test_cnn1d_learns_exercises_of_unseen_subjects() -> None:
    # held-out subjects, not held-out windows: a new device's wearer was never seen in training
    train, test = split("watch", by_group=True, scale=True)
    assert test.groups is not None
    assert train.groups is not None
    assert not set(test.groups) & set(train.groups)
    # chance: 7 exercises; the most common one is < 0.25 of the held-out windows
    assert majority_rate(test) < 0.25
    score = train_and_score("cnn1d", {}, train, test, epochs=3, batch_size=64, lr=0.003)
    assert score >= 0.7


def test_text_classifier_learns_tweet_sentiment() -> None:
    ds = load("tweets")
    train, test = train_test_split(ds, test_fraction=0.2, seed=0)
    # chance: 3 classes; the most common one is ≈ 0.43 of the held-out tweets
    assert majority_rate(test) < 0.45
    config = {"vocab_size": len(ds.preprocessing["vocab"])}
    score = train_and_score("textclf", config, train, test, epochs=3, batch_size=128, lr=0.01)
    assert score >= 0.65


# --- the training loop -------------------------------------------------------------------------


def digits_sample(rows: int = 200) -> Dataset:
    return load("digits").subset(np.arange(rows))


def test_fit_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    data = digits_sample()
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_model("cnn", {"input_size": 8, "dropout": 0.3, "batch_norm": True})
        before = torch.random.get_rng_state()
        losses = fit(model, data.x, data.y, epochs=2, batch_size=16, lr=0.01, seed=7)
        assert torch.equal(torch.random.get_rng_state(), before)
        runs.append((losses, predict(model, data.x)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    torch.manual_seed(1)
    model = build_model("cnn", {"input_size": 8, "dropout": 0.3, "batch_norm": True})
    other = fit(model, data.x, data.y, epochs=2, batch_size=16, lr=0.01, seed=8)
    assert other != runs[0][0]


def test_fit_with_sgd_and_zero_epochs() -> None:
    data = digits_sample()
    model = build_model("cnn", {"input_size": 8})
    assert fit(model, data.x, data.y, epochs=0, batch_size=8, lr=0.1, seed=0) == []
    losses = fit(model, data.x, data.y, epochs=2, batch_size=8, lr=0.05, seed=0, optimizer="sgd")
    assert len(losses) == 2
    assert all(np.isfinite(losses))


def test_accuracy_keeps_the_model_mode() -> None:
    data = digits_sample(20)
    model = build_model("cnn", {"input_size": 8}).train()
    accuracy(model, data.x, data.y)
    assert model.training


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"y": np.full(200, 10)}, ValidationError, r"y: label 10 ≥ the model's 10 classes"),
        ({"y": np.zeros(199, dtype=np.int64)}, ValidationError, r"y: shape \[199\]"),
        ({"y": np.full(200, 0.5)}, ValidationError, r"non-negative integers"),
        ({"x": np.full((200, 1, 8, 8), np.nan, np.float32)}, ValidationError, r"x: holds NaN"),
        ({"epochs": -1}, ConfigError, r"epochs"),
        ({"batch_size": 0}, ConfigError, r"batch_size"),
        ({"lr": float("nan")}, ConfigError, r"lr"),
        ({"optimizer": "lbfgs"}, ConfigError, r"optimizer"),
    ],
)
def test_fit_rejects_bad_input(change: dict[str, Any], error: type[Exception], match: str) -> None:
    data = digits_sample()
    args: dict[str, Any] = {"x": data.x, "y": data.y, "epochs": 1, "batch_size": 8, "lr": 0.01}
    args.update(change)
    model = build_model("cnn", {"input_size": 8})
    with pytest.raises(error, match=match):
        fit(model, seed=0, **args)
