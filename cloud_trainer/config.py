"""The trainer's typed config: `trainer.yaml` plus `FLEETLEARN_TRAINER__…` environment overrides.

One file describes the federated side of one model: where the log, the object store and the
signing key are, which architecture it trains, how rounds are run, which strategy aggregates,
and what an update must look like to count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bus.bridge.config import TopicMap
from bus.config import load_config
from bus.protocol import TrainingConfig
from bus.topics import check_fleet, check_model_name
from cloud_trainer.strategies import StrategyConfig

ENV_PREFIX = "FLEETLEARN_TRAINER"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    """What is trained, and the real data set its releases are evaluated on."""

    name: str = Field(description="the model's name on the wire and in the registry")
    architecture: str = Field(description="a name from models.registry (logreg, mlp, cnn1d, …)")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="the architecture's config; empty = derived from the data set's shapes",
    )
    dataset: str = Field(description="data set (models.datasets) whose held-out rows evaluate")
    split_seed: int = Field(0, description="seed of the train/held-out split")
    holdout: Literal["rows", "groups", "sessions"] | None = Field(
        None,
        description="what the split holds out: whole subjects (groups), whole recordings "
        "(sessions) or stratified rows; None = subjects where the data set has them, else rows",
    )
    init_seed: int = Field(0, description="seed of version 0's initial weights")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_model_name(value, where="model.name")


class RoundsSection(_Section):
    """How rounds are opened and closed.

    sync: a round is announced with a deadline; it closes when every selected device reported,
    when `target_updates` arrived, or at the deadline if `min_updates` arrived (otherwise it is
    abandoned and announced again). async: every `buffer_size` accepted updates make a new
    version (FedBuff); updates trained on a base up to `max_staleness` versions old still count,
    weighted down by (1 + staleness) ** -staleness_exponent.
    """

    mode: Literal["sync", "async"] = "sync"
    max_versions: int | None = Field(
        None, ge=1, description="stop once the global model reaches this version; None = run on"
    )
    deadline_s: float = Field(300.0, gt=0, description="how long a sync round stays open")
    min_updates: int = Field(1, ge=1, description="fewest updates a sync round can close with")
    target_updates: int | None = Field(
        None, ge=1, description="close a sync round as soon as this many arrived"
    )
    sampling_rate: float = Field(1.0, gt=0, le=1, description="share of eligible devices asked")
    sampling_seed: int = 0
    status_ttl_s: float = Field(
        120.0, gt=0, description="a device counts as eligible if its last status is this recent"
    )
    buffer_size: int = Field(10, ge=1, description="async: updates per new version")
    max_staleness: int = Field(4, ge=0, description="async: oldest base version still counted")
    staleness_exponent: float = Field(0.5, ge=0)
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="sent to devices with every round"
    )
    late_grace_s: float = Field(
        2.0,
        ge=0,
        description="how far record timestamps may trail the clock (producer clocks, append "
        "latency): a deadline closes a round only this long after it passed",
    )

    @model_validator(mode="after")
    def _targets(self) -> RoundsSection:
        if self.target_updates is not None and self.target_updates < self.min_updates:
            raise ValueError(
                f"target_updates ({self.target_updates}) is below min_updates ({self.min_updates})"
            )
        return self


class ValidationSection(_Section):
    max_norm: float | None = Field(
        None, gt=0, description="largest L2 norm of an update's delta; None = no bound"
    )


class ReleaseSection(_Section):
    private_key: Path = Field(description="the fleet's Ed25519 key (`fleetlearn keys generate`)")
    key_id: str = Field(description="the key's id; devices hold `{key_id}.pem`")
    tflite: bool | None = Field(None, description="also export TFLite; None = if installed")
    inline_max_bytes: int = Field(
        256 * 1024, ge=0, description="files up to this size ride inside the release message"
    )
    url_expiry_s: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)


class MetricsSection(_Section):
    prometheus_port: int | None = Field(None, ge=0, le=65535, description="None = no endpoint")
    tensorboard_dir: Path | None = Field(None, description="None = no event files")


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet: str
    log_url: str = Field(description="kafka://host:port or sqlite:///path")
    store_url: str = Field(description="s3://bucket/prefix?endpoint=… or file:///dir")
    topics: TopicMap = Field(default_factory=TopicMap, description="log topic names")
    model: ModelSection
    rounds: RoundsSection = Field(default_factory=RoundsSection)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    release: ReleaseSection
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    partitions: int = Field(
        6,
        ge=1,
        description="partitions of the updates and status topics if this trainer creates them",
    )
    fresh_start: Literal["latest", "earliest"] = Field(
        "latest",
        description="with no checkpoint yet, read updates from the log's end (only what comes "
        "after this trainer's first round can be for it) or from its beginning (replaying a "
        "recorded stream)",
    )
    checkpoints_kept: int = Field(3, ge=1, description="older checkpoints are deleted")
    poll_s: float = Field(0.2, gt=0, le=5, description="longest wait for a record per poll")

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, value: str) -> str:
        return check_fleet(value)


def load_trainer_config(
    path: Path | None, *, overrides: dict[str, Any] | None = None
) -> TrainerConfig:
    return load_config(TrainerConfig, path, env_prefix=ENV_PREFIX, overrides=overrides)
