"""Inference on the device through onnxruntime or a TFLite runtime, behind one interface.

Samples are stored flat (a feature vector per row); the model's own input signature says how
to shape them, so a 6 × 100 sensor window and a 30-column table go through the same call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bus.errors import ValidationError
from edge_agent.model_store import Installed
from models.export.runtimes import LiteRtRunner, OnnxRunner, installed_tflite_runtimes

RuntimeChoice = Literal["auto", "onnx", "tflite"]


@dataclass(frozen=True)
class Prediction:
    classes: npt.NDArray[np.int64]
    probabilities: npt.NDArray[np.float32]


class Predictor:
    """One loaded model file; `predict` takes rows of flat features, returns logits."""

    def __init__(self, installed: Installed, runtime: RuntimeChoice = "auto") -> None:
        self.installed = installed
        self.runtime, runner = _open(installed, runtime)
        self._runner: OnnxRunner | LiteRtRunner = runner
        signature = runner.signature()["inputs"][0]
        self.input_shape: tuple[int, ...] = tuple(int(d or 1) for d in signature["shape"][1:])
        self.input_dtype = np.dtype(
            "float32" if signature["dtype"] in {"float", "int8", "uint8"} else signature["dtype"]
        )
        self.width = math.prod(self.input_shape)
        # A device calls `predict` once per sample, where a few Python steps are a visible part
        # of a small model's latency: what can be decided once is decided here.
        self._run: Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]] = runner.run
        self._one_row = (1, *self.input_shape)

    @property
    def version(self) -> int:
        return self.installed.version

    def predict(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        rows = np.asarray(features)
        shape = rows.shape
        if len(shape) == 1 and shape[0] == self.width:  # one sample: the common call
            shaped = rows.reshape(self._one_row)
        elif len(shape) == 2 and shape[1] == self.width:
            shaped = rows.reshape((shape[0], *self.input_shape))
        else:
            raise ValidationError(
                f"expected rows of {self.width} features (model input {self.input_shape}), "
                f"got shape {(1, *shape) if len(shape) == 1 else shape}",
                where="features",
            )
        if rows.dtype is not self.input_dtype:  # `is`: a dtype equal but not identical converts
            shaped = self._convert(shaped)
        return self._run(shaped)

    def _convert(self, shaped: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self.input_dtype.kind in "iu":
            shaped = np.rint(shaped)
        return shaped.astype(self.input_dtype, copy=False)

    def classify(self, features: npt.ArrayLike) -> Prediction:
        logits = self.predict(features)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return Prediction(logits.argmax(axis=1).astype(np.int64), probabilities)


def _open(installed: Installed, runtime: RuntimeChoice) -> tuple[str, Any]:
    tflite = installed_tflite_runtimes()
    if runtime == "tflite" or (runtime == "auto" and tflite and installed.has("tflite")):
        if not tflite:
            raise ValidationError(
                "runtime 'tflite' asked for, but no TFLite runtime is installed "
                "(pip install ai-edge-litert)",
                where="model.runtime",
            )
        return tflite[0], LiteRtRunner(installed.file("tflite"), runtime=tflite[0])
    return "onnxruntime", OnnxRunner(installed.file("onnx"))


def health_check(predictor: Predictor, held_back: npt.NDArray[np.float32]) -> str | None:
    """Why the model is unfit to serve, or None. Held-back samples are the device's own data;
    a device with none yet scores one all-zero row, which still proves the file runs."""
    rows = held_back if len(held_back) else np.zeros((1, predictor.width), np.float32)
    try:
        logits = predictor.predict(rows)
    except ValidationError as exc:
        return f"inference failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - a runtime's own error types vary; all mean unfit
        return f"inference failed: {type(exc).__name__}: {exc}"
    if logits.ndim != 2 or logits.shape[0] != len(rows):
        return f"output shape {logits.shape} for {len(rows)} inputs"
    if not np.all(np.isfinite(logits)):
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        return f"non-finite outputs for {bad} of {len(rows)} held-back samples"
    return None
