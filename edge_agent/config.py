"""The agent's typed config: `device.yaml` plus `FLEETLEARN_EDGE__…` environment overrides.

One file describes a device: who it is, where the broker is, what it collects, how much disk it
may use, which model it serves and whether (and when) it trains. Everything has a default a
Raspberry Pi can live with except the device id and the broker URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bus.config import load_config
from bus.errors import ValidationError
from bus.topics import check_device_id, check_fleet

ENV_PREFIX = "FLEETLEARN_EDGE"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileCollectorConfig(_Section):
    """Tail a CSV or JSON-lines file that another program appends to."""

    kind: Literal["file"] = "file"
    name: str = Field("file", description="names the collector in logs and its saved position")
    stream: str = "default"
    path: Path
    format: Literal["csv", "jsonl"] = "csv"
    label: str | None = Field("label", description="column / key holding the label; None = none")
    features: list[str] | None = Field(
        None, description="columns / keys of the features, in order; None = all but the label"
    )
    from_start: bool = Field(True, description="read what the file already holds on first start")
    poll_s: float = Field(0.5, gt=0, le=60)


class MqttCollectorConfig(_Section):
    """Subscribe to sensors publishing on a broker on the device itself."""

    kind: Literal["mqtt"] = "mqtt"
    name: str = "mqtt"
    stream: str = "default"
    url: str = Field("mqtt://127.0.0.1:1883", description="the local sensors' broker")
    topic: str = Field(description="topic filter the sensors publish to")
    format: Literal["json", "csv"] = "json"


class ReplayCollectorConfig(_Section):
    """Play one subject's shard of a real data set as if a sensor produced it (demo, simulation)."""

    kind: Literal["replay"] = "replay"
    name: str = "replay"
    stream: str = "default"
    dataset: str = Field("watch", description="a name from models.datasets")
    subject: int = Field(0, ge=0, description="which group (subject) of the data set to play")
    devices: int | None = Field(
        None, ge=1, description="data sets without subjects: deal rows to this many devices"
    )
    partition: Literal["natural", "iid", "dirichlet"] | None = Field(
        None,
        description="how rows are dealt to devices: one subject each (natural), evenly (iid) or "
        "label-skewed (dirichlet); None = natural where the data set has subjects, else iid",
    )
    alpha: float = Field(0.3, gt=0, description="dirichlet: smaller = fewer labels per device")
    split_seed: int | None = Field(
        None,
        description="play only the training side of the trainer's held-out split with this "
        "seed, scaled with its statistics, so no device ever trains on a held-out row",
    )
    holdout: Literal["rows", "groups", "sessions"] | None = Field(
        None, description="what that split holds out (the trainer's model.holdout)"
    )
    shuffle: bool = Field(
        False, description="play the rows in a seeded random order instead of recording order"
    )
    rate_hz: float = Field(10.0, gt=0, description="samples per second; the pace of a sensor")
    loop: bool = Field(False, description="start again at the end")
    standardize: bool = Field(True, description="scale features with the whole data set's stats")
    seed: int = 0


class PluginCollectorConfig(_Section):
    """A collector another package registers under the `fleetlearn.collectors` entry points."""

    kind: Literal["plugin"] = "plugin"
    name: str = "plugin"
    stream: str = "default"
    entry_point: str = Field(description="entry point name in the `fleetlearn.collectors` group")
    options: dict[str, Any] = Field(default_factory=dict)


CollectorConfig = Annotated[
    FileCollectorConfig | MqttCollectorConfig | ReplayCollectorConfig | PluginCollectorConfig,
    Field(discriminator="kind"),
]


class BufferConfig(_Section):
    max_rows: int = Field(200_000, ge=1, description="oldest samples go first beyond this")
    max_bytes: int = Field(256 << 20, ge=1024)
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="NORMAL: a power cut may lose the last commits, never corrupt"
    )


class OutboxConfig(_Section):
    max_messages: int = Field(1000, ge=1, description="updates kept while offline; newest refused")
    max_bytes: int = Field(512 << 20, ge=1024)
    window: int = Field(16, ge=1, description="updates published at once awaiting PUBACK")


class ModelConfig(_Section):
    name: str = Field(description="which model's releases this device follows")
    runtime: Literal["auto", "onnx", "tflite"] = Field(
        "auto", description="auto: TFLite where a TFLite runtime is installed, else onnxruntime"
    )
    keys_dir: Path = Field(description="the fleet's Ed25519 public keys, {key_id}.pem")
    keep: int = Field(
        3, ge=2, description="installed versions kept (at least current and previous)"
    )
    health_samples: int = Field(32, ge=1, description="held-back samples a new model must score")
    download_timeout_s: float = Field(60.0, gt=0)


class GateConfig(_Section):
    """When the device is too busy, too hot or on battery, training waits."""

    max_cpu_percent: float = Field(
        80.0, gt=0, le=100, description="busier than this, wait; 100 = never wait for the CPU"
    )
    max_temperature_c: float = Field(75.0)
    allow_on_battery: bool = False
    retry_s: float = Field(30.0, gt=0, description="how long a deferred round waits to try again")


class LocalTrainingConfig(_Section):
    enabled: bool = Field(True, description="train when selected (needs the edge-train extra)")
    min_samples: int = Field(32, ge=1, description="fewer buffered samples: sit the round out")
    max_samples: int = Field(20_000, ge=1, description="newest samples a round trains on")
    holdout: int = Field(
        32, ge=0, description="newest samples kept out of training, for the model health check"
    )
    privacy_delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) reported")
    gate: GateConfig = GateConfig()


class EdgeConfig(_Section):
    device_id: str
    fleet: str = "default"
    prefix: str | None = Field(None, description="MQTT topic prefix, overriding the fleet default")
    mqtt_url: str = Field(description="the fleet broker (mqtt:// or mqtts://, credentials in it)")
    data_dir: Path = Field(Path("/var/lib/fleetlearn"), description="buffer, outbox, models")
    heartbeat_s: float = Field(30.0, gt=0, description="seconds between status messages")
    collectors: list[CollectorConfig] = Field(default_factory=list)
    buffer: BufferConfig = BufferConfig()
    outbox: OutboxConfig = OutboxConfig()
    model: ModelConfig
    training: LocalTrainingConfig = LocalTrainingConfig()
    metrics_port: int | None = Field(None, description="serve Prometheus metrics on this port")
    metrics_host: str = "127.0.0.1"

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return _checked(check_device_id, value)

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, value: str) -> str:
        return _checked(check_fleet, value)

    @field_validator("collectors")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [c.name for c in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"collector names must be unique (twice: {twice})")
        return value


def _checked(check: Any, value: str) -> str:
    try:
        return str(check(value))
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc


def load_edge_config(path: Path | None, *, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    return load_config(EdgeConfig, path, env_prefix=ENV_PREFIX, overrides=overrides)
