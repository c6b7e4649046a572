"""The agent's typed config: `device.yaml` plus `FLEETLEARN_EDGE__…` environment overrides.

One file describes a device: who it is, where the broker is, what it collects, how much disk it
may use, which model it serves and whether (and when) it trains. Everything has a default a
Raspberry Pi can live with except the device id and the broker URL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bus.config import load_config
from bus.errors import ValidationError
from bus.topics import check_device_id, check_fleet

ENV_PREFIX = "FLEETLEARN_EDGE"
AUTO_SUBJECT: Final = "auto"  # a replay collector's subject chosen from the device id
# What a data batch's `stream` may be on the wire (docs/protocol.md, names).
STREAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


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
    subject: int | Literal["auto"] = Field(
        0,
        description="which group (subject) of the data set to play, or this device's share "
        "(0 to devices - 1) of a set without subjects; `auto`: chosen from `device_id` by a "
        "stable hash, so the replicas of a simulated fleet spread over the subjects",
    )
    device_id: str | None = Field(
        None,
        description="subject auto: the id whose hash picks the subject; None = the device's "
        "own device_id (EdgeConfig fills it in)",
    )
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

    @field_validator("subject", mode="before")
    @classmethod
    def _subject(cls, value: Any) -> Any:
        # A plain int or the one word: no 3.0, no True, no "Auto" slipping through lax parsing.
        if value == AUTO_SUBJECT or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit():  # quoted, e.g. "3"
            return int(value)
        raise ValueError(
            f"subject must be a subject number (an integer, 0 or more) or {AUTO_SUBJECT!r} "
            f"(picked from the device id), not {value!r}"
        )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("device_id must not be empty (leave it out for the device's own)")
        return value


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


class DataUploadConfig(_Section):
    """Raw samples to the cloud: `{p}/devices/{id}/data`, which the bridge carries into
    `fleetlearn.data`, the DDP job's stream. Off unless the device's owner opts in."""

    enabled: bool = Field(False, description="send raw samples at all; off: none leave the device")
    streams: list[str] | None = Field(
        None, description="buffer streams to send; None = every stream the buffer holds"
    )
    labelled_only: bool = Field(
        True,
        description="send labelled samples only (the DDP job trains on labels); False also "
        "sends unlabelled ones, in batches of their own that carry no `y`",
    )
    sample_shape: list[int] | None = Field(
        None,
        description="the shape one flat sample takes as the cloud model's input (the DDP "
        "job's model.input_shape, e.g. [6, 100]); samples of another size are not sent. "
        "None = flat, as buffered",
    )
    label_names: list[str] | None = Field(
        None, description="class names, sent with every batch; a label beyond them is not sent"
    )
    batch_samples: int = Field(64, ge=1, le=65536, description="samples per message at most")
    interval_s: float = Field(10.0, gt=0, le=86400, description="how often to look for samples")
    max_samples_per_hour: int = Field(
        0,
        ge=0,
        description="samples queued in any rolling hour at most (a metered link); 0 = no cap. "
        "At the cap the position waits and nothing is dropped",
    )
    max_queued_batches: int = Field(
        100,
        ge=1,
        description="batches waiting in the outbox at most (offline); beyond it samples wait "
        "in the buffer. At most half the outbox, so updates always find room",
    )
    from_start: bool = Field(
        False,
        description="when first enabled, also send what the buffer already holds; False = only "
        "samples collected from then on",
    )

    @field_validator("streams")
    @classmethod
    def _stream_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one stream, or leave it out (null) for every stream")
        bad = [name for name in value if not STREAM_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"stream names must be 1-128 of A-Z a-z 0-9 . _ - (got {bad})")
        if len(set(value)) != len(value):
            raise ValueError(f"a stream is listed twice ({value})")
        return value

    @field_validator("sample_shape")
    @classmethod
    def _shape(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not (1 <= len(value) <= 7 and all(d >= 1 for d in value)):
            raise ValueError(f"1 to 7 dimensions of at least 1 (got {value})")
        return value

    @field_validator("label_names")
    @classmethod
    def _label_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not (
            1 <= len(value) <= 1024 and all(1 <= len(n) <= 256 for n in value)
        ):
            raise ValueError("1 to 1024 names of 1 to 256 characters each")
        return value

    @model_validator(mode="after")
    def _cap_fits_a_batch(self) -> Self:
        if 0 < self.max_samples_per_hour < self.batch_samples:
            raise ValueError(
                f"max_samples_per_hour {self.max_samples_per_hour} is below batch_samples "
                f"{self.batch_samples}: lower batch_samples or raise the cap"
            )
        return self


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
    data_upload: DataUploadConfig = DataUploadConfig()
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
    def _replay_device_id(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        """Replay collectors pick `subject: auto` from this device's id unless given another."""
        device_id = info.data.get("device_id")  # absent when it failed its own validation
        if device_id is None:
            return value
        return [
            c.model_copy(update={"device_id": device_id})
            if isinstance(c, ReplayCollectorConfig) and c.device_id is None
            else c
            for c in value
        ]

    @field_validator("collectors")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [c.name for c in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"collector names must be unique (twice: {twice})")
        return value

    @model_validator(mode="after")
    def _data_upload_fits(self) -> Self:
        upload = self.data_upload
        if not upload.enabled:
            return self
        if upload.max_queued_batches > self.outbox.max_messages // 2:
            raise ValueError(
                f"data_upload.max_queued_batches {upload.max_queued_batches} is more than half "
                f"of outbox.max_messages {self.outbox.max_messages}: updates need the room"
            )
        if upload.streams is None:
            bad = sorted({c.stream for c in self.collectors if not STREAM_NAME.fullmatch(c.stream)})
            if bad:
                raise ValueError(
                    f"data_upload sends every stream, and streams {bad} have names a data batch "
                    "cannot carry (1-128 of A-Z a-z 0-9 . _ -): rename them or list data_upload."
                    "streams"
                )
        return self


def _checked(check: Any, value: str) -> str:
    try:
        return str(check(value))
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc


def load_edge_config(path: Path | None, *, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    return load_config(EdgeConfig, path, env_prefix=ENV_PREFIX, overrides=overrides)
