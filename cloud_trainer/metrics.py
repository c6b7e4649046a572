"""Per-version figures to three places: the log line, Prometheus, and TensorBoard event files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# A round lasts from seconds (a buffer filling in a test) to hours (a sync round waiting on
# devices that train overnight); `deadline_s` defaults to 300.
ROUND_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


@dataclass(frozen=True)
class VersionFigures:
    model: str
    version: int
    round_id: str
    participants: int
    rejected: int
    aggregation_s: float
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    round_s: float | None = None  # announcement to close; None: not a round that closed


class TrainerMetrics:
    """Prometheus series (own registry, so several trainers can live in one test process)."""

    def __init__(self, model: str, tensorboard_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.accepted = Counter(
            "trainer_updates_accepted", "updates counted", ["model"], registry=self.registry
        )
        self.rejected = Counter(
            "trainer_updates_rejected",
            "updates refused (sent to the dead-letter topic)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.versions = Counter(
            "trainer_versions", "global model versions released", ["model"], registry=self.registry
        )
        self.abandoned = Counter(
            "trainer_rounds_abandoned",
            "rounds that missed their deadline with too few updates",
            ["model"],
            registry=self.registry,
        )
        self.version = Gauge(
            "trainer_model_version", "current global version", ["model"], registry=self.registry
        )
        self.participants = Gauge(
            "trainer_round_participants",
            "updates in the last version",
            ["model"],
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "trainer_heldout_accuracy",
            "held-out accuracy of the last version",
            ["model"],
            registry=self.registry,
        )
        self.loss = Gauge(
            "trainer_heldout_loss",
            "held-out loss of the last version",
            ["model"],
            registry=self.registry,
        )
        self.aggregation = Histogram(
            "trainer_aggregation_seconds",
            "time to aggregate a round and step the server optimizer",
            ["model"],
            registry=self.registry,
        )
        self.round_duration = Histogram(
            "trainer_round_duration_seconds",
            "from a round's announcement to its close (async: a version's round to its buffer "
            "filling)",
            ["model"],
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )
        self.round_duration.labels(model)  # exported (at 0) before the first round closes
        self._writer: Any = None
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter  # only where event files are asked for

            self._writer = SummaryWriter(str(tensorboard_dir))

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def reject(self, reason: str) -> None:
        # The label is the reason's first words (bounded cardinality), the log has all of it.
        self.rejected.labels(self.model, _reason_kind(reason)).inc()

    def record(self, figures: VersionFigures) -> None:
        labels = (figures.model,)
        self.versions.labels(*labels).inc()
        self.version.labels(*labels).set(figures.version)
        self.participants.labels(*labels).set(figures.participants)
        self.aggregation.labels(*labels).observe(figures.aggregation_s)
        if figures.round_s is not None:
            self.round_duration.labels(*labels).observe(figures.round_s)
        if figures.accuracy is not None:
            self.accuracy.labels(*labels).set(figures.accuracy)
        if figures.loss is not None:
            self.loss.labels(*labels).set(figures.loss)
        log.info(
            "version released",
            extra={
                "model": figures.model,
                "version": figures.version,
                "round": figures.round_id,
                "participants": figures.participants,
                "rejected": figures.rejected,
                "aggregation_s": round(figures.aggregation_s, 6),
                "round_s": None if figures.round_s is None else round(figures.round_s, 3),
                "accuracy": figures.accuracy,
                "loss": figures.loss,
                "train_loss": figures.train_loss,
            },
        )
        if self._writer is not None:
            step = figures.version
            for name, value in (
                ("round/participants", figures.participants),
                ("round/rejected", figures.rejected),
                ("round/aggregation_s", figures.aggregation_s),
                ("round/duration_s", figures.round_s),
                ("heldout/accuracy", figures.accuracy),
                ("heldout/loss", figures.loss),
                ("devices/train_loss", figures.train_loss),
            ):
                if value is not None:
                    self._writer.add_scalar(name, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _reason_kind(reason: str) -> str:
    for kind in (
        "deadline",
        "not open",
        "base_version",
        "already",
        "not selected",
        "NaN",
        "norm",
        "shape",
        "names",
        "dtype",
        "fleet",
        "model",
    ):
        if kind in reason:
            return kind.lower().replace(" ", "_")
    return "invalid_message"
