"""Export of a model trained on real data: parity with torch in fp32, accuracy kept in int8."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bus.errors import ValidationError
from models.datasets import load, standardize, train_test_split
from models.export.pipeline import ExportRequest, export_checked, torch_logits
from models.export.runtimes import OnnxRunner
from models.manifest import read_manifest
from models.parity import ParityError, compare, enforce


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, ExportRequest]:
    torch.manual_seed(0)
    train, test = train_test_split(load("breast_cancer"), test_fraction=0.3, seed=0)
    train, test = standardize(train, test)
    train_x, train_y = train.x, train.y
    model = torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    request = ExportRequest(
        name="cancer-mlp",
        version=3,
        architecture="mlp",
        classes=["malignant", "benign"],
        heldout_x=test.x,
        heldout_y=test.y,
        calibration_x=train_x[:128],
        preprocessing={"standardized": True},
    )
    return model.eval(), request


def test_export_passes_its_checks_and_writes_a_manifest(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    model, request = trained
    manifest = export_checked(model, request, tmp_path)
    assert [(f.format, f.quantization) for f in manifest.files] == [
        ("onnx", "fp32"),
        ("onnx", "int8"),
    ]
    fp32, int8 = manifest.checks
    assert fp32["max_abs"] < 1e-4
    assert fp32["reference_accuracy"] > 0.9  # chance is 0.63 (the benign share)
    assert int8["accuracy_drop"] <= 0.01
    assert manifest.signatures["cancer-mlp.onnx"].inputs[0].shape == [None, 30]  # dynamic batch
    sizes = {f.quantization: f.size for f in manifest.files}
    assert (
        sizes["int8"] < sizes["fp32"] * 1.5
    )  # tiny model: QDQ overhead dominates; bench/ has the real ratios
    assert read_manifest(tmp_path) == manifest


def test_tflite_fp32_and_int8_in_litert(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    model, request = trained
    manifest = export_checked(model, request, tmp_path, formats=("tflite",))
    assert [f.name for f in manifest.files] == ["cancer-mlp.tflite", "cancer-mlp.int8.tflite"]
    fp32, int8 = manifest.checks
    assert fp32["runtime"] == "ai-edge-litert"
    assert fp32["max_abs"] < 1e-4
    assert int8["agreement"] >= 0.95
    assert int8["accuracy_drop"] <= 0.01
    sizes = {f.quantization: f.size for f in manifest.files}
    assert sizes["int8"] < sizes["fp32"]
    int8_input = manifest.signatures["cancer-mlp.int8.tflite"].inputs[0]
    assert int8_input.dtype == "int8"  # fully integer: the device feeds quantized inputs
    assert int8_input.scale is not None
    assert int8_input.zero_point is not None


def test_dynamic_batch_runs_any_batch_size(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    model, request = trained
    export_checked(model, request, tmp_path)
    runner = OnnxRunner(tmp_path / "cancer-mlp.onnx")
    for batch in (1, 7, 64):
        out = runner.run(request.heldout_x[:batch])
        np.testing.assert_allclose(out, torch_logits(model, request.heldout_x[:batch]), atol=1e-5)


def test_parity_failure_says_by_how_much(trained: tuple[torch.nn.Module, ExportRequest]) -> None:
    model, request = trained
    reference = torch_logits(model, request.heldout_x)
    shifted = reference + np.float32(0.01)
    report = compare(
        reference, shifted, request.heldout_y, runtime="onnxruntime", quantization="fp32"
    )
    with pytest.raises(ParityError, match=r"max \|Δlogit\| 0\.01 > 0\.0001"):
        enforce(report)
    flipped = -reference
    report = compare(
        reference, flipped, request.heldout_y, runtime="onnxruntime", quantization="int8"
    )
    with pytest.raises(ParityError, match=r"points below torch fp32"):
        enforce(report)


def test_tampered_file_fails_the_manifest(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    model, request = trained
    export_checked(model, request, tmp_path)
    path = tmp_path / "cancer-mlp.int8.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValidationError, match="sha256"):
        read_manifest(tmp_path)


def test_too_few_calibration_samples(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    model, request = trained
    with pytest.raises(ValidationError, match="calibration"):
        export_checked(model, replace(request, calibration_x=request.calibration_x[:3]), tmp_path)


def test_tflite_runtimes_are_found_by_what_is_installed(
    trained: tuple[torch.nn.Module, ExportRequest], tmp_path: Path
) -> None:
    from models.export.runtimes import LiteRtRunner, installed_tflite_runtimes

    assert "ai-edge-litert" in installed_tflite_runtimes()
    model, request = trained
    manifest = export_checked(model, replace(request, int8=False), tmp_path, formats=("tflite",))
    assert {c["runtime"] for c in manifest.checks} == set(installed_tflite_runtimes())
    if "tflite-runtime" not in installed_tflite_runtimes():  # numpy < 2: its own environment
        with pytest.raises(ValidationError, match="'tflite-runtime' is not installed"):
            LiteRtRunner(tmp_path / manifest.files[0].name, runtime="tflite-runtime")
