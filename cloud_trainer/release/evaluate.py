"""How good a global model is on held-out rows: accuracy and mean cross-entropy, nothing else.

Deterministic: eval mode, no autograd, fixed batches, and the loss summed in float64 from the
logits, so the same parameters and rows give the same numbers on every run and every machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from bus.errors import ValidationError
from models.train import predict


def evaluate(
    module: nn.Module, x: npt.ArrayLike, y: npt.ArrayLike, *, batch_size: int = 1024
) -> dict[str, float]:
    """`accuracy` (share of rows whose top logit is the label) and `loss` (mean cross-entropy)."""
    logits = predict(module, x, batch_size=batch_size).astype(np.float64)
    labels = _labels(y, logits.shape)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # logsumexp, stable
    picked = logits[np.arange(len(labels)), labels]
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "loss": float(np.mean(log_norm - picked)),
    }


def _labels(y: npt.ArrayLike, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    rows, classes = shape
    array: npt.NDArray[Any] = np.asarray(y)
    if array.shape != (rows,):
        raise ValidationError(f"shape {list(array.shape)} != expected [{rows}]", where="y")
    if array.dtype.kind not in "iu":
        raise ValidationError(f"class labels must be integers, not {array.dtype}", where="y")
    if rows and (array.min() < 0 or array.max() >= classes):
        raise ValidationError(
            f"labels must lie in 0..{classes - 1}, found {array.min()}..{array.max()}", where="y"
        )
    return array.astype(np.int64)
