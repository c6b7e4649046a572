"""Every architecture: trained on its real data, exported to ONNX and TFLite (fp32 and int8),
parity and accuracy checked in onnxruntime and ai-edge-litert, re-checked by `models check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetlearn.cli import app

pytestmark = pytest.mark.e2e
runner = CliRunner()
ARCHITECTURES = ["logreg", "mlp", "cnn", "cnn1d", "textclf"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("weights")
    paths = {}
    for model in ARCHITECTURES:
        out = directory / f"{model}.safetensors"
        result = runner.invoke(
            app, ["models", "train", "--model", model, "--epochs", "3", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "held-out accuracy" in result.output
        paths[model] = out
    return paths


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("model", ARCHITECTURES)
def test_export_and_check(trained: dict[str, Path], tmp_path: Path, model: str, fmt: str) -> None:
    out = tmp_path / "release"
    args = ["models", "export", "--model", model, "--weights", str(trained[model])]
    result = runner.invoke(app, [*args, "--format", fmt, "--int8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(f["format"], f["quantization"]) for f in manifest["files"]] == [
        (fmt, "fp32"),
        (fmt, "int8"),
    ]
    fp32, int8 = manifest["checks"]
    assert fp32["reference_accuracy"] > 0.6  # every set's chance level is at most 0.63
    assert int8["accuracy_drop"] <= 0.01
    sizes = {f["quantization"]: f["size"] for f in manifest["files"]}
    if model in {"cnn", "cnn1d", "textclf"}:  # big enough for weights to dominate the file
        assert sizes["int8"] <= 0.5 * sizes["fp32"]
    checked = runner.invoke(app, ["models", "check", str(out)])
    assert checked.exit_code == 0, checked.output
    assert "every file within tolerance" in " ".join(checked.output.split())


def test_check_refuses_a_tampered_release(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "release"
    args = [
        "models",
        "export",
        "--model",
        "mlp",
        "--weights",
        str(trained["mlp"]),
        "--out",
        str(out),
    ]
    assert runner.invoke(app, args).exit_code == 0
    model_file = out / "mlp-breast_cancer.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    result = runner.invoke(app, ["models", "check", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ")
    assert "sha256" in result.output


def test_weights_of_another_architecture_are_refused(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    args = ["models", "export", "--model", "cnn", "--weights", str(trained["mlp"])]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "holds a 'mlp' model, not 'cnn'" in result.output


def test_training_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    files = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}.safetensors"
        args = ["models", "train", "--model", "logreg", "--epochs", "2", "--seed", "7"]
        assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0
        files.append(out.read_bytes())
    assert files[0] == files[1]
