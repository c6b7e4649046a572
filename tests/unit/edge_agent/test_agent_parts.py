"""The agent's small parts: its config, the round ledger, how samples become model inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError, ValidationError
from edge_agent.config import load_edge_config
from edge_agent.round_ledger import KEEP, RoundLedger
from edge_agent.round_runner import input_shape

MINIMAL = """
device_id: pi-7
mqtt_url: mqtt://broker:1883
model: {name: har, keys_dir: /etc/fleetlearn/keys}
collectors:
  - {kind: replay, dataset: watch, subject: 3}
  - {kind: file, name: door, path: /var/log/door.csv}
"""


def test_config_from_yaml_with_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("FLEETLEARN_EDGE__TRAINING__GATE__MAX_TEMPERATURE_C", "65")
    monkeypatch.setenv("FLEETLEARN_EDGE__MQTT_URL", "mqtts://u:p@fleet.example:8883")
    config = load_edge_config(path)
    assert config.device_id == "pi-7"
    assert config.mqtt_url == "mqtts://u:p@fleet.example:8883"
    assert config.training.gate.max_temperature_c == 65
    assert [c.kind for c in config.collectors] == ["replay", "file"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("device_id: pi/7", "device_id"),
        ("collectors: [{kind: camera}]", "collectors.0"),
        ("collectors: [{kind: replay}, {kind: replay}]", "collector names must be unique"),
        ("buffer: {max_rows: 0}", "buffer.max_rows"),
        ("collectors: [{kind: replay, subject: Auto}]", r"collectors\.0\.replay\.subject.*'auto'"),
        ("heartbeat: 5", "heartbeat"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, change: str, message: str) -> None:
    path = tmp_path / "device.yaml"
    key = change.split(":")[0]
    kept = [line for line in MINIMAL.splitlines() if not line.startswith(key)]
    if key == "collectors":
        kept = [line for line in kept if not line.startswith("  - ")]
    path.write_text("\n".join([*kept, change]))
    with pytest.raises(ConfigError, match=message):
        load_edge_config(path)


def test_the_ledger_remembers_rounds_across_restarts(tmp_path: Path) -> None:
    ledger = RoundLedger(tmp_path / "rounds.json")
    ledger.mark("r1")
    ledger.mark("r1")
    assert "r1" in RoundLedger(tmp_path / "rounds.json")
    assert "r2" not in RoundLedger(tmp_path / "rounds.json")
    for i in range(KEEP + 5):
        ledger.mark(f"x{i}")
    again = RoundLedger(tmp_path / "rounds.json")
    assert "r1" not in again  # the oldest make room
    assert f"x{KEEP + 4}" in again


def test_a_damaged_ledger_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / "rounds.json").write_text("{not json")
    with pytest.raises(ValidationError, match="round ledger"):
        RoundLedger(tmp_path / "rounds.json")


def test_flat_samples_take_the_architectures_shape() -> None:
    assert input_shape("cnn1d", {"in_channels": 6}, 600) == (6, 100)
    assert input_shape("cnn", {"in_channels": 1}, 64) == (1, 8, 8)
    assert input_shape("mlp", {}, 30) == (30,)
    with pytest.raises(ValidationError, match="do not split into 6 channels"):
        input_shape("cnn1d", {"in_channels": 6}, 601)
    with pytest.raises(ValidationError, match="not a square image"):
        input_shape("cnn", {"in_channels": 1}, 63)
