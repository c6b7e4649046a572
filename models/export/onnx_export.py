"""ONNX export: one self-contained file, dynamic batch, pinned opset; int8 by static quantization.

The TorchScript-based exporter is used on purpose: it writes a single file with the weights
inside and needs no extra package, where the torch.export-based one needs `onnxscript`.
Quantization is post-training and static (QDQ, per-channel weights), calibrated on real
samples the caller passes in, so activations get scales from the data the device will see.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bus.errors import ValidationError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    module: torch.nn.Module, example: npt.NDArray[Any], path: Path, *, opset: int = OPSET
) -> Path:
    """Export `module` in eval mode; the first axis of input and output is the dynamic batch."""
    module = module.eval()
    sample = torch.from_numpy(np.ascontiguousarray(example[:1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, chosen above
        torch.onnx.export(
            module,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


class _Calibration:
    """Feeds real samples to the quantizer one small batch at a time."""

    def __init__(self, samples: npt.NDArray[Any], batch: int = 32) -> None:
        self._batches: Iterator[npt.NDArray[Any]] = iter(
            samples[i : i + batch] for i in range(0, len(samples), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {INPUT_NAME: np.ascontiguousarray(chunk)}


def quantize_onnx_int8(source: Path, target: Path, calibration: npt.NDArray[Any]) -> Path:
    """Static int8 (QDQ) quantization of `source`, calibrated on `calibration` samples."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < 8:
        raise ValidationError(
            f"int8 calibration needs at least 8 real samples, got {len(calibration)}",
            where="calibration",
        )
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    reader = _Calibration(calibration)
    CalibrationDataReader.register(_Calibration)
    try:
        quantize_static(
            str(prepared),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return target
