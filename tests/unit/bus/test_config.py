"""YAML plus environment configuration: precedence, typing and error messages."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bus.config import env_overrides, load_config
from bus.errors import ConfigError


class Limits(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    max_inflight: int = 100
    topics: list[str] = pydantic.Field(default_factory=list)


class Sample(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    mqtt_url: str
    ratio: float = 0.5
    limits: Limits = pydantic.Field(default_factory=Limits)


def test_env_overrides_nest_and_type_values() -> None:
    env = {"FL__LIMITS__MAX_INFLIGHT": "7", "FL__RATIO": "0.25", "OTHER": "x"}
    assert env_overrides("FL", env) == {"limits": {"max_inflight": 7}, "ratio": 0.25}


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt_url: mqtt://a:1883\nratio: 0.1\nlimits: {max_inflight: 5}\n")
    env = {"FL__RATIO": "0.2", "FL__LIMITS__TOPICS": "[u, d]"}
    config = load_config(Sample, path, env_prefix="FL", environ=env, overrides={"ratio": 0.3})
    assert config.ratio == 0.3
    assert config.limits.max_inflight == 5
    assert config.limits.topics == ["u", "d"]
    assert config.mqtt_url == "mqtt://a:1883"


def test_errors_name_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt_url: mqtt://a\nlimits: {max_inflight: many}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: limits\.max_inflight"):
        load_config(Sample, path, env_prefix="FL", environ={})


def test_unknown_keys_and_bad_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt_url: x\nmqtt_ulr: y\n")
    with pytest.raises(ConfigError, match="mqtt_ulr"):
        load_config(Sample, path, env_prefix="FL", environ={})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Sample, path, env_prefix="FL", environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Sample, tmp_path / "missing.yaml", env_prefix="FL", environ={})
