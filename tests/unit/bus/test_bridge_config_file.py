"""The bridge config shipped in infra/ loads, and says what the docs promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.bridge.config import BridgeConfig
from bus.config import load_config

SHIPPED = Path(__file__).resolve().parents[3] / "infra" / "bridge" / "bridge.yaml"


def test_shipped_config_loads_with_scale_out_and_claim_check() -> None:
    config = load_config(BridgeConfig, SHIPPED, env_prefix="FLEETLEARN_BRIDGE")
    assert config.share_group == "bridges"
    assert config.store_url is not None
    assert config.store_url.startswith("s3://")
    assert config.topics == BridgeConfig.model_fields["topics"].default


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLEARN_BRIDGE__CLIENT_ID", "fleetlearn-bridge-1")
    monkeypatch.setenv("FLEETLEARN_BRIDGE__TOPICS__DLQ", "custom.dlq")
    config = load_config(BridgeConfig, SHIPPED, env_prefix="FLEETLEARN_BRIDGE")
    assert config.client_id == "fleetlearn-bridge-1"
    assert config.topics.dlq == "custom.dlq"
