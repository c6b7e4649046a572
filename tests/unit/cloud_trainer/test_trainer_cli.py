"""`fleetlearn trainer run` on the embedded backends, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from cloud_trainer.release import generate_keypair
from fleetlearn.cli import app


def write(path: Path, fields: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def test_run_releases_version_zero_and_stops(tmp_path: Path) -> None:
    key = generate_keypair(tmp_path / "keys", "k1").private
    config = write(
        tmp_path / "trainer.yaml",
        {
            "fleet": "farm",
            "log_url": f"sqlite:///{tmp_path / 'log.db'}",
            "store_url": f"file://{tmp_path / 'store'}",
            "model": {"name": "cancer", "architecture": "logreg", "dataset": "breast_cancer"},
            "release": {"private_key": str(key), "key_id": "k1", "tflite": False},
        },
    )
    result = CliRunner().invoke(app, ["trainer", "run", "--config", str(config), "--seconds", "1"])
    assert result.exit_code == 0, result.output
    assert "stopped at version 0" in result.output
    assert (tmp_path / "store" / "registry" / "cancer" / "v000000.json").exists()
    assert (tmp_path / "store" / "checkpoints" / "cancer" / "latest.json").exists()


def test_a_bad_config_is_one_error_line(tmp_path: Path) -> None:
    config = write(tmp_path / "trainer.yaml", {"fleet": "farm", "rounds": {"mode": "sometimes"}})
    result = CliRunner().invoke(app, ["trainer", "run", "--config", str(config)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "mode" in errors[0] or "log_url" in errors[0]


def test_the_shipped_example_config_is_valid() -> None:
    from cloud_trainer.config import load_trainer_config

    root = Path(__file__).resolve().parents[3]
    settings = load_trainer_config(root / "infra" / "trainer" / "trainer.yaml")
    assert settings.strategy.name == "fedavg"
    assert settings.rounds.training.codec.name == "int8"
