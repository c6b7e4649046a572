"""Export a trained module and refuse to release it unless every runtime agrees with torch.

For each format and quantization mode: write the file, run real held-out samples through the
runtime a device uses, compare with torch (parity) and with the labels (accuracy), and record
the reports in the manifest. The first check that fails stops the export with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from bus.protocol import ModelFile
from models.export.onnx_export import export_onnx, quantize_onnx_int8
from models.export.runtimes import (
    LiteRtRunner,
    OnnxRunner,
    Runner,
    installed_tflite_runtimes,
    run_batched,
)
from models.export.tflite_export import export_tflite, quantize_tflite_int8
from models.manifest import ModelManifest, Signature, describe_file, write_manifest
from models.parity import ParityReport, compare, enforce

Quantization = Literal["fp32", "int8"]


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


Format = Literal["onnx", "tflite"]


def export_checked(
    module: torch.nn.Module,
    request: ExportRequest,
    out_dir: Path,
    *,
    formats: tuple[Format, ...] = ("onnx",),
) -> ModelManifest:
    """Files per format (fp32, int8 if asked), parity and accuracy enforced, and `manifest.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = torch_logits(module, request.heldout_x)
    files: list[ModelFile] = []
    signatures: dict[str, Signature] = {}
    checks: list[ParityReport] = []
    modes: tuple[Quantization, ...] = ("fp32", "int8") if request.int8 else ("fp32",)
    for fmt in formats:
        for mode in modes:
            path = _write(module, request, out_dir, fmt, mode)
            runners = _runners(path, fmt)
            checks.extend(_checked(runner, reference, request, mode) for runner in runners)
            files.append(describe_file(path, fmt=fmt, quantization=mode))
            signatures[path.name] = Signature.model_validate(runners[0].signature())
    manifest = ModelManifest(
        name=request.name,
        version=request.version,
        architecture=request.architecture,
        classes=request.classes,
        signatures=signatures,
        preprocessing=request.preprocessing,
        files=files,
        checks=[report.as_dict() for report in checks],
    )
    write_manifest(out_dir, manifest)
    return manifest


def _runners(path: Path, fmt: Format) -> list[OnnxRunner | LiteRtRunner]:
    if fmt == "onnx":
        return [OnnxRunner(path)]
    return [LiteRtRunner(path, runtime=name) for name in installed_tflite_runtimes()]


def _write(
    module: torch.nn.Module, request: ExportRequest, out_dir: Path, fmt: Format, mode: Quantization
) -> Path:
    suffix = "" if mode == "fp32" else ".int8"
    path = out_dir / f"{request.name}{suffix}.{fmt}"
    if fmt == "onnx":
        fp32 = out_dir / f"{request.name}.onnx"
        if mode == "fp32":
            return export_onnx(module, request.heldout_x, path)
        return quantize_onnx_int8(fp32, path, request.calibration_x)
    if mode == "fp32":
        return export_tflite(module, request.heldout_x, path)
    return quantize_tflite_int8(module, request.calibration_x, path)


def _checked(
    runner: Runner, reference: npt.NDArray[np.float32], request: ExportRequest, mode: str
) -> ParityReport:
    outputs = run_batched(runner, request.heldout_x)
    report = compare(reference, outputs, request.heldout_y, runtime=runner.name, quantization=mode)
    enforce(report)
    return report


def check_directory(directory: Path) -> list[ParityReport]:
    """Verify files against the manifest, then re-run every runtime against the torch weights."""
    import hashlib

    from bus.errors import ValidationError
    from models.manifest import read_manifest
    from models.workflow import load_weights, prepare_data

    manifest = read_manifest(directory)
    weights_path = directory / "weights.safetensors"
    if not weights_path.is_file():
        raise ValidationError(
            "weights.safetensors is missing: nothing to compare with", where=str(directory)
        )
    if hashlib.sha256(weights_path.read_bytes()).hexdigest() != manifest.weights_sha256:
        raise ValidationError("sha256 differs from the manifest", where=str(weights_path))
    loaded = load_weights(weights_path)
    split = prepare_data(loaded.dataset, seed=loaded.seed)
    request = ExportRequest(
        name=manifest.name,
        version=manifest.version,
        architecture=manifest.architecture,
        classes=manifest.classes,
        heldout_x=split.test.x,
        heldout_y=split.test.y,
        calibration_x=split.train.x[:0],
    )
    reference = torch_logits(loaded.module, split.test.x)
    reports = []
    for entry in manifest.files:
        if entry.format == "weights":  # parameters, not a file a runtime runs
            continue
        path = directory / entry.name
        for runner in _runners(path, entry.format):
            reports.append(_checked(runner, reference, request, entry.quantization))
    return reports
