"""A small, seeded training loop on the CPU: what a device runs for a round and what tests use.

Deterministic: the same model state, data and seed give the same losses bit for bit. The seed
drives the shuffling and dropout through a forked RNG, so calling `fit` leaves torch's global
random state as it found it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bus.errors import ConfigError, ValidationError

Optimizer = Literal["adam", "sgd"]
MAX_EPOCHS = 10_000


def _inputs(x: npt.ArrayLike) -> torch.Tensor:
    """float inputs as float32; integer inputs (token ids) as int64."""
    array = np.asarray(x)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValidationError(
            f"needs shape (batch, ...) with batch ≥ 1, got {list(array.shape)}", where="x"
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValidationError("holds NaN or Inf", where="x")
        return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if array.dtype.kind in "iu":
        return torch.from_numpy(np.array(array, dtype=np.int64, copy=True))
    raise ValidationError(f"dtype {array.dtype} is neither float nor integer", where="x")


def _labels(y: npt.ArrayLike, rows: int) -> torch.Tensor:
    array = np.asarray(y)
    if array.shape != (rows,):
        raise ValidationError(f"shape {list(array.shape)} != expected [{rows}]", where="y")
    as_int = array.astype(np.int64)
    if array.dtype.kind not in "iuf" or np.any(as_int != array) or np.any(as_int < 0):
        raise ValidationError("class labels must be non-negative integers", where="y")
    return torch.from_numpy(as_int)


def _check_options(epochs: int, batch_size: int, lr: float) -> None:
    if not 0 <= epochs <= MAX_EPOCHS:
        raise ConfigError(f"epochs must be in [0, {MAX_EPOCHS}], got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if not (np.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive finite number, got {lr}")


def _optimizer(model: nn.Module, name: Optimizer, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def _check_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Labels beyond the model's logits would fail deep inside cross-entropy; say so here."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        classes = int(model(x[:1]).shape[-1])
    model.train(was_training)
    if int(y.max()) >= classes:
        raise ValidationError(f"label {int(y.max())} ≥ the model's {classes} classes", where="y")


def fit(
    model: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: Optimizer = "adam",
) -> list[float]:
    """Train `model` in place with cross-entropy; returns the mean training loss of each epoch."""
    _check_options(epochs, batch_size, lr)
    inputs = _inputs(x)
    labels = _labels(y, inputs.shape[0])
    _check_classes(model, inputs, labels)
    opt = _optimizer(model, optimizer, lr)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    rows = inputs.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            total = 0.0
            for batch in torch.split(torch.randperm(rows, generator=order), batch_size):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs[batch]), labels[batch])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / rows)
    model.eval()
    return losses


def predict(model: nn.Module, x: npt.ArrayLike, *, batch_size: int = 1024) -> npt.NDArray[Any]:
    """Logits (rows, classes) as float32, computed in eval mode; the model's mode is restored."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    inputs = _inputs(x)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in torch.split(inputs, batch_size)])
    model.train(was_training)
    return logits.to(torch.float32).numpy()


def accuracy(model: nn.Module, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Fraction of rows whose highest logit is the label."""
    logits = predict(model, x)
    labels = _labels(y, logits.shape[0]).numpy()
    return float(np.mean(np.argmax(logits, axis=1) == labels))
