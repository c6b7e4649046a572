"""`fleetlearn services up|status|down` runs real services in the background and stops them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetlearn.cli import app
from fleetlearn.services import manager

pytestmark = pytest.mark.integration


def test_up_status_down_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLEARN_SERVICES_DIR", str(tmp_path))
    runner = CliRunner()
    started = runner.invoke(app, ["services", "up", "mosquitto", "--random-ports"])
    try:
        assert started.exit_code == 0, started.output
        assert "FLEETLEARN_MQTT_URL=mqtt://127.0.0.1:" in started.output
        running = manager.load_state()["mosquitto"]
        with socket.create_connection((running.host, running.port), timeout=5):
            pass
        status = runner.invoke(app, ["services", "status"])
        assert status.exit_code == 0, status.output
        assert "serving" in status.output
    finally:
        stopped = runner.invoke(app, ["services", "down"])
    assert stopped.exit_code == 0
    assert "mosquitto" in stopped.output
    assert not running.alive()
    assert manager.load_state() == {}


def test_unknown_service_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLEARN_SERVICES_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["services", "up", "redis"])
    assert result.exit_code == 2
    assert "unknown service" in result.output
