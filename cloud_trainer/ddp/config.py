"""The DDP job's typed config: `ddp.yaml` plus `FLEETLEARN_DDP__…` environment overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bus.config import load_config
from bus.errors import ValidationError
from bus.topics import KAFKA_DATA, KAFKA_SEEDS, check_fleet, check_model_name

ENV_PREFIX = "FLEETLEARN_DDP"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DdpModel(_Section):
    architecture: str = Field(description="a name from models.registry (cnn1d, cnn, textclf, …)")
    config: dict[str, Any] = Field(description="the architecture's config")
    input_shape: list[int] = Field(
        min_length=1, description="one sample's shape, e.g. [6, 100]; records must match it"
    )
    init_seed: int = Field(0, description="seed of the initial weights on a fresh start")


class DdpTraining(_Section):
    records_per_step: int = Field(
        4, ge=1, description="data records (device batches) each rank takes per step"
    )
    learning_rate: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_step: int = Field(1000, ge=1, description="steps between learning-rate decays")
    lr_gamma: float = Field(0.5, gt=0, le=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    idle_stop_s: float | None = Field(
        None,
        gt=0,
        description="stop once no rank has had a record for this long (a bounded run); "
        "None = keep waiting for data",
    )
    amp: bool = Field(True, description="bfloat16 autocast on GPU (ignored on CPU)")
    seed: int = Field(0, description="shuffling and dropout; each rank adds its rank")


class DdpCheckpoint(_Section):
    every_steps: int = Field(50, ge=1)
    keep_states: int = Field(
        3, ge=1, description="model states kept; the small per-rank records are all kept"
    )


class DdpSeed(_Section):
    """Offer the finished job's model to a federated trainer as its next base (hybrid loop)."""

    model: str = Field(description="the trainer's model.name; its trainer checks the tensors fit")
    fleet: str = Field("default", description="the trainer's fleet")
    topic: str = Field(KAFKA_SEEDS, description="the trainer's topics.seeds")
    max_record_bytes: int = Field(
        900_000,
        ge=1024,
        description="larger seeds go through the object store, the record carries a reference",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        try:
            return check_model_name(value, where="seed.model")
        except ValidationError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, value: str) -> str:
        try:
            return check_fleet(value, where="seed.fleet")
        except ValidationError as exc:
            raise ValueError(str(exc)) from None


class DdpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str = Field(description="names the job's checkpoints: ddp/{job}/ in the store")
    log_url: str = Field(description="kafka://host:port (or sqlite:// on one machine)")
    store_url: str = Field(description="s3://bucket/prefix?endpoint=… or file:///dir")
    topic: str = Field(KAFKA_DATA, description="the data topic devices' samples arrive on")
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="with no checkpoint yet, read from the beginning or the end"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto: NCCL where CUDA is, gloo elsewhere"
    )
    model: DdpModel
    training: DdpTraining = Field(default_factory=DdpTraining)
    checkpoint: DdpCheckpoint = Field(default_factory=DdpCheckpoint)
    seed: DdpSeed | None = Field(
        None, description="when set, rank 0 offers the final model to this trainer at the end"
    )
    poll_s: float = Field(0.2, gt=0, le=5)

    @field_validator("job")
    @classmethod
    def _job(cls, value: str) -> str:
        try:
            return check_model_name(value, where="job")
        except ValidationError as exc:  # as a field error, so the message names the field
            raise ValueError(str(exc)) from None


def load_ddp_config(path: Path | None, *, overrides: dict[str, Any] | None = None) -> DdpConfig:
    return load_config(DdpConfig, path, env_prefix=ENV_PREFIX, overrides=overrides)
