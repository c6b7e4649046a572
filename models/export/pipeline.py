"""Export a trained module and refuse to release it unless every runtime agrees with torch.

For each format and quantization mode: write the file, run real held-out samples through the
runtime a device uses, compare with torch (parity) and with the labels (accuracy), and record
the reports in the manifest. The first check that fails stops the export with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bus.protocol import ModelFile
from models.export.onnx_export import export_onnx, quantize_onnx_int8
from models.export.runtimes import OnnxRunner, run_batched
from models.manifest import ModelManifest, Signature, describe_file, write_manifest
from models.parity import ParityReport, compare, enforce


@dataclass(frozen=True)
class ExportRequest:
    """What to export and the real data to check it with."""

    name: str
    version: int
    architecture: str
    classes: list[str]
    heldout_x: npt.NDArray[Any]
    heldout_y: npt.NDArray[np.int64]
    calibration_x: npt.NDArray[Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    int8: bool = True


def torch_logits(
    module: torch.nn.Module, x: npt.NDArray[Any], batch: int = 256
) -> npt.NDArray[np.float32]:
    module = module.eval()
    with torch.no_grad():
        chunks = [
            module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
            for i in range(0, len(x), batch)
        ]
    return torch.cat(chunks).numpy().astype(np.float32)


def export_onnx_checked(
    module: torch.nn.Module, request: ExportRequest, out_dir: Path
) -> ModelManifest:
    """fp32 (and int8) ONNX files with parity and accuracy enforced, plus `manifest.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = torch_logits(module, request.heldout_x)
    fp32_path = export_onnx(module, request.heldout_x, out_dir / f"{request.name}.onnx")
    files: list[ModelFile] = []
    checks: list[ParityReport] = []
    fp32 = OnnxRunner(fp32_path)
    checks.append(_checked(fp32, reference, request, "fp32"))
    files.append(describe_file(fp32_path, fmt="onnx", quantization="fp32"))
    if request.int8:
        int8_path = quantize_onnx_int8(
            fp32_path, out_dir / f"{request.name}.int8.onnx", request.calibration_x
        )
        checks.append(_checked(OnnxRunner(int8_path), reference, request, "int8"))
        files.append(describe_file(int8_path, fmt="onnx", quantization="int8"))
    manifest = ModelManifest(
        name=request.name,
        version=request.version,
        architecture=request.architecture,
        classes=request.classes,
        signature=Signature.model_validate(fp32.signature()),
        preprocessing=request.preprocessing,
        files=files,
        checks=[report.as_dict() for report in checks],
    )
    write_manifest(out_dir, manifest)
    return manifest


def _checked(
    runner: OnnxRunner, reference: npt.NDArray[np.float32], request: ExportRequest, mode: str
) -> ParityReport:
    outputs = run_batched(runner, request.heldout_x)
    report = compare(reference, outputs, request.heldout_y, runtime=runner.name, quantization=mode)
    enforce(report)
    return report
