"""The demo end to end: real edge agents, bridge and trainer, on the embedded default and,
unchanged, on Mosquitto, Kafka and MinIO (the command a user runs, in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetlearn.cli import app
from fleetlearn.demo.config import DemoConfig
from fleetlearn.demo.loop import DemoResult, run_demo
from fleetlearn.demo.report import plot_accuracy, write_summary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _check(result: DemoResult, devices: int, rounds: int) -> None:
    assert [r.updates for r in result.rounds] == [devices] * rounds
    assert [r.version for r in result.rounds] == list(range(1, rounds + 1))
    assert all(r.update_bytes > 0 for r in result.rounds)
    assert result.rejected == []
    assert result.rounds[-1].accuracy > result.baseline_accuracy + 0.2  # it really learns
    assert result.devices_on_final
    assert {d.version for d in result.devices} == {rounds}
    assert all(d.verified == "yes" and d.runtime == "onnxruntime" for d in result.devices)
    assert result.device_accuracy is not None
    assert result.device_accuracy > result.baseline_accuracy


def test_embedded_default_whole_loop(tmp_path: Path) -> None:
    config = DemoConfig(partition="iid", devices=3, rounds=2, workdir=tmp_path)
    result = run_demo(config)
    _check(result, 3, 2)
    first = result.rounds[0]
    assert first.dense_bytes / first.update_bytes > 3  # int8 + zstd against float32
    assert {"model.onnx", "weights.fltensors", "manifest.json"} <= set(result.release_files)
    onnx = Path(result.release_files["model.onnx"].removeprefix("file://"))
    assert onnx.is_file()
    assert onnx.is_relative_to(tmp_path)
    png = plot_accuracy(result, tmp_path / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    summary = json.loads(write_summary(result, tmp_path / "summary.json").read_text())
    assert summary["devices_on_final_version"] is True
    assert len(summary["rounds"]) == 2
    # every part's structured log went to the run's file
    lines = [json.loads(line) for line in (result.run_dir / "demo.log").read_text().splitlines()]
    messages = {line["msg"] for line in lines}
    assert {"initial model released", "update queued", "update counted"} <= messages


def test_cli_shows_the_rounds_devices_and_the_way_to_real_services(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--dataset",
            "mnist",
            "--partition",
            "iid",
            "--devices",
            "2",
            "--rounds",
            "1",
            "--codec",
            "topk",
            "--workdir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "all on verified v1" in out
    assert "accuracy.png" in out
    assert "fleetlearn demo --dataset mnist --devices 2 --rounds 1" in out
    assert "--mqtt mqtt://" in out
    run = next((tmp_path / "runs").iterdir())
    assert (run / "accuracy.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["codec"] == "topk"
    assert summary["rounds"][0]["updates"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--devices", "3"], "has 10 subjects, one per device: use --devices 10"),
        (["--dataset", "mnist", "--partition", "natural"], "mnist has no subjects"),
        (["--log", "ftp://nowhere", "--partition", "iid"], "ftp://nowhere: unsupported scheme"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["demo", *options, "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ")
    assert message in result.output


@pytest.mark.integration
def test_the_same_command_on_real_services(
    mosquitto: Any, kafka: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    store = s3.url(bucket, "demo")
    command = [
        sys.executable,
        "-m",
        "fleetlearn.cli",
        "demo",
        "--partition",
        "iid",
        "--devices",
        "3",
        "--rounds",
        "2",
        "--mqtt",
        mosquitto.url,
        "--log",
        kafka.url,
        "--store",
        store,
        "--workdir",
        str(tmp_path),
        "--timeout",
        "300",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["devices_on_final_version"] is True
    assert [r["updates"] for r in summary["rounds"]] == [3, 3]
    assert summary["final_accuracy"] > summary["baseline_accuracy"] + 0.2
    onnx = summary["release_files"]["model.onnx"]
    assert onnx.startswith(f"s3://{bucket}/demo/{run.name}/models/motion-cnn1d/v000002/")
    key = onnx.removeprefix(f"s3://{bucket}/")
    assert s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
