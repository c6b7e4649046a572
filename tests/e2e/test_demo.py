"""The demo loop end to end: embedded default, and unchanged on Mosquitto, Kafka and MinIO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bus.protocol import read_tensors
from bus.store import open_store
from fleetlearn.cli import app
from fleetlearn.demo.loop import DemoConfig, DemoResult, run_demo

pytestmark = pytest.mark.e2e


def _check(result: DemoResult, config: DemoConfig) -> None:
    assert [r.updates for r in result.rounds] == [config.devices] * config.rounds
    assert result.rejected == []
    assert result.rounds[-1].accuracy >= 0.85  # from 0.67 (all benign) before training
    assert result.rounds[-1].accuracy > result.baseline_accuracy
    assert result.rounds[-1].loss < result.rounds[0].loss


def test_embedded_default(tmp_path: Path) -> None:
    config = DemoConfig(devices=5, rounds=3, workdir=tmp_path)
    result = run_demo(config)
    _check(result, config)
    store = open_store((tmp_path / "store").as_uri())
    model = read_tensors(memoryview(store.get("models/logreg/v3.safetensors")))
    assert model["weight"].shape == (30,)


@pytest.mark.integration
def test_same_loop_on_real_services(mosquitto: Any, kafka: Any, s3: Any, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    config = DemoConfig(
        devices=4,
        rounds=2,
        codec="topk",
        mqtt_url=mosquitto.url,
        log_url=kafka.url,
        store_url=s3.url(bucket, "demo"),
        workdir=tmp_path,
    )
    result = run_demo(config)
    assert [r.updates for r in result.rounds] == [4, 4]
    assert result.rounds[-1].model_url == f"s3://{bucket}/demo/models/logreg/v2.safetensors"
    assert s3.client().head_object(Bucket=bucket, Key="demo/models/logreg/v2.safetensors")


def test_cli_prints_the_rounds(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--devices", "3", "--rounds", "2", "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "test acc" in result.output
    assert "after 2 rounds" in result.output


def test_cli_reports_a_bad_url_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--log-url", "ftp://nowhere", "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ftp://nowhere: unsupported scheme")
