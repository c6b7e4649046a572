"""Train, save, load and export: the steps `fleetlearn models` strings together.

A weights file is a safetensors file of the model's wire tensors whose metadata says how to
rebuild everything around them: the architecture and its config, and the data set, split seed
and preprocessing statistics, so held-out samples for a later parity check are the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bus.errors import ConfigError, ProtocolError, ValidationError
from bus.protocol import write_tensors
from bus.protocol.tensors import read_tensors_with_metadata
from models.datasets import Dataset, Holdout, load, standardize, train_test_split
from models.params import get_parameters, set_parameters
from models.registry import get_spec

# The real data set each architecture is trained and checked on by default.
DEFAULT_DATASET = {
    "logreg": "breast_cancer",
    "mlp": "breast_cancer",
    "cnn": "mnist",
    "cnn1d": "watch",
    "textclf": "tweets",
}


@dataclass(frozen=True)
class Split:
    train: Dataset
    test: Dataset


@dataclass(frozen=True)
class WeightsFile:
    module: torch.nn.Module
    architecture: str
    config: dict[str, Any]
    dataset: str
    seed: int


def prepare_data(
    name: str, *, seed: int, test_fraction: float = 0.2, holdout: Holdout | None = None
) -> Split:
    """Split and standardise float features. `holdout` says what is held out: whole subjects
    (the default where the data has them), whole recordings, or stratified rows."""
    data = load(name)
    how = holdout or ("groups" if data.groups is not None else "rows")
    train, test = train_test_split(data, test_fraction=test_fraction, seed=seed, by=how)
    if train.x.dtype.kind == "f" and name not in {"mnist", "digits"}:
        train, test = standardize(train, test)
    return Split(train, test)


def default_config(architecture: str, data: Dataset) -> dict[str, Any]:
    """The config fields that follow from the data: input width, classes, vocabulary."""
    spec = get_spec(architecture)
    classes = len(data.classes)
    if spec.input_kind == "tabular":
        return {"in_features": int(data.x.shape[1]), "num_classes": classes}
    if spec.input_kind == "sensor":
        return {"in_channels": int(data.x.shape[1]), "num_classes": classes}
    if spec.input_kind == "image":
        return {"in_channels": 1, "input_size": int(data.x.shape[-1]), "num_classes": classes}
    return {"vocab_size": len(data.preprocessing["vocab"]), "num_classes": classes}


def save_weights(path: Path, weights: WeightsFile, preprocessing: dict[str, Any]) -> Path:
    metadata = {
        "architecture": weights.architecture,
        "config": json.dumps(weights.config, sort_keys=True),
        "dataset": weights.dataset,
        "seed": str(weights.seed),
        "preprocessing": json.dumps(preprocessing, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(write_tensors(get_parameters(weights.module), metadata=metadata))
    return path


def load_weights(path: Path) -> WeightsFile:
    """Rebuild the module a weights file describes; every problem names the file."""
    try:
        tensors, metadata = read_tensors_with_metadata(memoryview(path.read_bytes()))
        architecture = metadata["architecture"]
        config = json.loads(metadata["config"])
        seed = int(metadata["seed"])
        dataset = metadata["dataset"]
    except OSError as exc:
        raise ConfigError(f"cannot read weights {path}: {exc.strerror}") from exc
    except (ProtocolError, KeyError, ValueError) as exc:
        raise ValidationError(f"not a fleetlearn weights file: {exc}", where=str(path)) from exc
    module = get_spec(architecture).build(config)
    set_parameters(module, tensors)
    return WeightsFile(module.eval(), architecture, config, dataset, seed)


def build_seeded(architecture: str, config: dict[str, Any], seed: int) -> torch.nn.Module:
    """Build with initial weights drawn from `seed`, leaving torch's global generator alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_spec(architecture).build(config)
