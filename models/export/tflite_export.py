"""TFLite export through litert-torch (the `tflite` extra), fp32 and static int8.

int8 follows PT2E: export the graph, insert observers, calibrate on real samples, convert,
and hand the quantizer to the converter so the file holds real int8 kernels; weights PT2E
cannot annotate (embeddings) are then stored as int8 by ai-edge-quantizer. TFLite models
take one sample per call (batch 1), which is how a device runs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bus.errors import ConfigError, ValidationError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter is chatty on stderr


def _litert() -> Any:
    try:
        import litert_torch
    except ImportError as exc:
        raise ConfigError(
            "TFLite export needs the tflite extra: pip install 'fleetlearn[tflite]'"
        ) from exc
    # Its step-by-step progress goes to stdout through a console of its own: a service's
    # stdout (and a live display) is not the place; failures still raise.
    progress = getattr(litert_torch, "progress", None)
    if progress is not None and hasattr(progress, "console"):
        progress.console.quiet = True
    return litert_torch


def export_tflite(module: torch.nn.Module, example: npt.NDArray[Any], path: Path) -> Path:
    litert_torch = _litert()
    sample = (torch.from_numpy(np.ascontiguousarray(example[:1])),)
    path.parent.mkdir(parents=True, exist_ok=True)
    litert_torch.convert(module.eval(), sample).export(str(path))
    return path


def quantize_tflite_int8(
    module: torch.nn.Module, calibration: npt.NDArray[Any], path: Path, *, batch: int = 32
) -> Path:
    """Static int8, per-channel weights, activations calibrated on `calibration`."""
    litert_torch = _litert()
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    if len(calibration) < 8:
        raise ValidationError(
            f"int8 calibration needs at least 8 real samples, got {len(calibration)}",
            where="calibration",
        )
    sample = (torch.from_numpy(np.ascontiguousarray(calibration[:1])),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    graph = torch.export.export(module.eval(), sample).module()
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), 1):  # batch 1: the graph was exported for it
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[start : start + 1])))
            if start >= batch * 8:
                break
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    litert_torch.convert(
        converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)
    ).export(str(path))
    _quantize_leftover_weights(path)
    return path


def _quantize_leftover_weights(path: Path) -> None:
    """int8 for the weights PT2E leaves in float (it has no embedding annotator): a text
    model's embedding table would otherwise keep the int8 file as large as the fp32 one."""
    from ai_edge_quantizer import quantizer, recipe

    worker = quantizer.Quantizer(str(path))
    worker.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    candidate = path.with_suffix(".wi8.tflite")
    worker.quantize().export_model(str(candidate), overwrite=True)
    if candidate.stat().st_size < path.stat().st_size:
        candidate.replace(path)
    else:
        candidate.unlink()
