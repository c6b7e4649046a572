"""Logistic regression in plain numpy: the stand-in device model of the interim demo.

Small enough to train on a device's shard in milliseconds, so the demo exercises the bus
(codecs, MQTT, the log, the store) rather than waiting on a training loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Params = dict[str, npt.NDArray[np.float32]]


def init_params(features: int) -> Params:
    return {
        "weight": np.zeros(features, dtype=np.float32),
        "bias": np.zeros((), dtype=np.float32),
    }


def _sigmoid(z: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    clipped = np.clip(z, -30.0, 30.0).astype(np.float64)
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-clipped))
    return result


def train_local(
    params: Params,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    rng: np.random.Generator,
) -> Params:
    """Mini-batch gradient descent on the log loss, starting from `params` (left untouched)."""
    weight = params["weight"].astype(np.float64)
    bias = float(params["bias"])
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            error = _sigmoid(x[rows] @ weight + bias) - y[rows]
            weight -= learning_rate * (x[rows].T @ error) / len(rows)
            bias -= learning_rate * float(error.mean())
    return {
        "weight": weight.astype(np.float32),
        "bias": np.asarray(bias, dtype=np.float32),
    }


def evaluate(
    params: Params, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """Mean log loss and accuracy on held-out rows."""
    p = _sigmoid(x @ params["weight"].astype(np.float64) + float(params["bias"]))
    eps = 1e-12
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    accuracy = float(np.mean((p >= 0.5) == (y >= 0.5)))
    return loss, accuracy
