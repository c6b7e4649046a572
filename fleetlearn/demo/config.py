"""What `fleetlearn demo` runs: every field is a command-line option with a working default.

The defaults are the embedded demo: ten devices, one per subject of the smartwatch motion
recordings, a convolutional model, FedAvg, int8 updates with zstd, on a broker, log and store
started for the run. Per data set defaults (model, partition, learning rate) are chosen where
the option is left out, so `--dataset mnist` alone is a sensible run too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bus.errors import FleetlearnError
from bus.protocol import CodecName
from bus.urls import parse_url

DatasetName = Literal["motion", "mnist", "tweets"]
Partition = Literal["natural", "iid", "dirichlet"]
DemoStrategy = Literal[
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "median",
    "trimmed_mean",
    "krum",
]


@dataclass(frozen=True)
class DatasetPlan:
    """How a data set is run when the options leave it open."""

    source: str
    """The name in models.datasets."""
    architecture: str
    partition: Partition
    holdout: Literal["rows", "groups", "sessions"]
    """What the trainer holds out to score releases (devices never play those rows)."""
    learning_rate: float
    subjects: int | None
    """Subjects in the data (one device each under the natural partition); None = none."""


PLANS: dict[str, DatasetPlan] = {
    # Whole recordings held out: every subject can be a device and is tested on recordings its
    # device never played (windows overlap within a recording, never across).
    "motion": DatasetPlan("watch", "cnn1d", "natural", "sessions", 0.05, 10),
    "mnist": DatasetPlan("mnist", "cnn", "dirichlet", "rows", 0.05, None),
    "tweets": DatasetPlan("tweets", "textclf", "dirichlet", "rows", 0.5, None),
}

URL_SCHEMES = {
    "mqtt_url": ("mqtt", "mqtts"),
    "log_url": ("kafka", "sqlite"),
    "store_url": ("s3", "file"),
}
FEDPROX_MU = 0.01  # the proximal term `--strategy fedprox` sends devices (Li et al. use 0.001-1)
SERVER_LR = {"fedadam": 0.01, "fedyogi": 0.01, "fedadagrad": 0.05}


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName = Field("motion", description="motion (smartwatch), mnist or tweets")
    devices: int = Field(10, ge=1, le=50, description="simulated devices, each a real agent")
    rounds: int = Field(10, ge=1, le=100, description="federated rounds (released versions)")
    strategy: DemoStrategy = "fedavg"
    codec: CodecName = Field(CodecName.INT8, description="update codec on the wire")
    topk_ratio: float = Field(0.05, gt=0, le=1, description="share of entries top-k sends")
    compress: bool = Field(True, description="zstd-compress update payloads")
    partition: Partition | None = Field(
        None, description="natural (one subject per device), iid or dirichlet; None = per data set"
    )
    alpha: float = Field(0.3, gt=0, description="Dirichlet concentration (label skew)")
    epochs: int = Field(2, ge=1, le=50, description="local epochs per round")
    learning_rate: float | None = Field(None, gt=0, description="device SGD step; None = per set")
    batch_size: int = Field(32, ge=1)
    holdback: int = Field(
        48, ge=1, description="newest samples each device keeps out of training to test on"
    )
    seed: int = 0
    rate_hz: float = Field(2000.0, gt=0, description="how fast devices replay their recordings")
    round_deadline_s: float = Field(120.0, gt=0, description="a round closes by then regardless")
    timeout_s: float = Field(900.0, gt=0, description="the whole run gives up after this")
    mqtt_url: str | None = Field(None, description="broker; None starts one for the run")
    log_url: str | None = Field(None, description="kafka:// or sqlite://; None = SQLite")
    store_url: str | None = Field(None, description="s3:// or file://; None = a directory")
    workdir: Path | None = Field(
        None, description="where runs are kept; default ~/.cache/fleetlearn/demo"
    )

    @property
    def plan(self) -> DatasetPlan:
        return PLANS[self.dataset]

    @property
    def chosen_partition(self) -> Partition:
        return self.partition or self.plan.partition

    @property
    def chosen_learning_rate(self) -> float:
        return self.learning_rate or self.plan.learning_rate

    @field_validator("mqtt_url", "log_url", "store_url")
    @classmethod
    def _scheme(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked before anything starts, so a typo costs no broker start-up."""
        if value is not None:
            try:
                parse_url(value, schemes=URL_SCHEMES[str(info.field_name)])
            except FleetlearnError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _fits(self) -> DemoConfig:
        subjects = self.plan.subjects
        if self.chosen_partition == "natural":
            if subjects is None:
                raise ValueError(
                    f"{self.dataset} has no subjects to give each device: use --partition iid "
                    "or --partition dirichlet"
                )
            if self.devices != subjects:
                raise ValueError(
                    f"the natural split of {self.dataset} has {subjects} subjects, one per "
                    f"device: use --devices {subjects}, or --partition iid or dirichlet"
                )
        return self
