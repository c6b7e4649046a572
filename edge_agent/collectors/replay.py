"""Play one subject's rows of a real data set at a sensor's pace (demos and simulated fleets).

The rows are the subject's own (data sets with groups) or this device's IID share (without),
scaled with the whole data set's statistics like the cloud's training data, flattened to one
vector each. The index reached is saved after every batch, so a restarted device goes on
where it stopped instead of playing the same rows again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError
from edge_agent.buffer import Sample
from edge_agent.collectors.base import MAX_BATCH, Emit, PositionFile
from edge_agent.config import ReplayCollectorConfig
from models.datasets import Dataset, load, partition_iid, standardize

log = logging.getLogger(__name__)

BATCH_S = 0.2  # at a high rate, a batch holds this many seconds of samples


def subject_rows(config: ReplayCollectorConfig) -> Dataset:
    """The rows this device plays, standardized with the whole data set's statistics."""
    ds = load(config.dataset)
    if config.standardize and ds.x.dtype == np.float32:  # token ids (tweets) stay as they are
        ds, _ = standardize(ds, ds)
    if ds.groups is not None:
        subjects = np.unique(ds.groups).tolist()
        if config.subject not in subjects:
            raise ConfigError(
                f"data set {config.dataset!r} has no subject {config.subject}; "
                f"its subjects are {subjects}"
            )
        return ds.subset(np.flatnonzero(ds.groups == config.subject))
    if config.devices is None:
        raise ConfigError(
            f"data set {config.dataset!r} has no subjects: set `devices` (how many devices "
            "share its rows) and `subject` (this device's share, 0 to devices - 1)"
        )
    if config.subject >= config.devices:
        raise ConfigError(
            f"subject {config.subject} is not a share of {config.devices} devices "
            f"(0 to {config.devices - 1})"
        )
    return partition_iid(ds, config.devices, seed=config.seed)[config.subject]


class ReplayCollector:
    def __init__(self, config: ReplayCollectorConfig, *, state_dir: Path) -> None:
        self.config = config
        self.name = config.name
        rows = subject_rows(config)
        self.features: npt.NDArray[np.float32] = np.ascontiguousarray(
            rows.x.reshape(len(rows), -1), dtype=np.float32
        )
        self.labels = rows.y.astype(np.float64)
        self._position = PositionFile(state_dir, config.name)
        # A saved index counts only for the same rows; another subject or data set starts at 0.
        self._source = {
            "dataset": config.dataset,
            "subject": config.subject,
            "devices": config.devices,
            "seed": config.seed,
            "rows": len(self.labels),
        }
        saved = self._position.load() or {}
        index = saved.get("index")
        same = saved.get("source") == self._source
        self.index = index if same and isinstance(index, int) and 0 <= index <= len(self) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit batches at `rate_hz`; returns at the end unless `loop`, or when `stop` is set."""
        rate = self.config.rate_hz
        size = min(MAX_BATCH, max(1, int(rate * BATCH_S)))
        due = time.monotonic()
        while not stop.is_set():
            if self.index >= len(self):
                if not self.config.loop or len(self) == 0:
                    log.info("replay finished", extra={"collector": self.name, "rows": len(self)})
                    return
                self.index = 0
            start, end = self.index, min(self.index + size, len(self))
            emit(self._batch(start, end))
            self.index = end
            self._position.save({"source": self._source, "index": end})
            # Behind (a slow emit)? Go on from now rather than rushing to catch up.
            due = max(due + (end - start) / rate, time.monotonic())
            if end < len(self) or self.config.loop:
                stop.wait(max(0.0, due - time.monotonic()))

    def _batch(self, start: int, end: int) -> list[Sample]:
        at = time.time()
        stream = self.config.stream
        return [
            Sample(self.features[i], float(self.labels[i]), at, stream) for i in range(start, end)
        ]
