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
from models.datasets import Dataset, load, partition_dirichlet, partition_iid, standardize

log = logging.getLogger(__name__)

BATCH_S = 0.2  # at a high rate, a batch holds this many seconds of samples
# The settings that decide which rows are played, in which order: a saved position is only
# good for the same ones.
ROW_CHOICE = {
    "dataset",
    "subject",
    "devices",
    "partition",
    "alpha",
    "split_seed",
    "holdout",
    "shuffle",
    "seed",
}


def subject_rows(config: ReplayCollectorConfig) -> Dataset:
    """The rows this device plays: its subject's (natural) or its share (iid, dirichlet).

    With `split_seed`, only the training side of the trainer's split, scaled with that side's
    statistics exactly as the trainer scales it; otherwise every row, scaled with the whole data
    set's statistics. Token ids (tweets) and images in [0, 1] stay as they are.
    """
    if config.split_seed is not None:
        from models.workflow import prepare_data

        ds = prepare_data(config.dataset, seed=config.split_seed, holdout=config.holdout).train
    else:
        ds = load(config.dataset)
        if config.standardize and ds.x.dtype == np.float32:
            ds, _ = standardize(ds, ds)
    partition = config.partition or ("natural" if ds.groups is not None else "iid")
    if partition == "natural":
        if ds.groups is None:
            raise ConfigError(
                f"data set {config.dataset!r} has no subjects to split by: use partition "
                "iid or dirichlet with `devices`"
            )
        subjects = np.unique(ds.groups).tolist()
        if config.subject not in subjects:
            raise ConfigError(
                f"data set {config.dataset!r} has no subject {config.subject}; "
                f"its subjects are {subjects}"
            )
        rows = ds.subset(np.flatnonzero(ds.groups == config.subject))
    else:
        rows = _share(ds, config, partition)
    if config.shuffle:
        rows = rows.subset(np.random.default_rng(config.seed).permutation(len(rows)))
    return rows


def _share(ds: Dataset, config: ReplayCollectorConfig, partition: str) -> Dataset:
    if config.devices is None:
        raise ConfigError(
            f"partition {partition!r} deals data set {config.dataset!r} to devices: set "
            "`devices` (how many devices share its rows) and `subject` (this device's share, "
            "0 to devices - 1)"
        )
    if config.subject >= config.devices:
        raise ConfigError(
            f"subject {config.subject} is not a share of {config.devices} devices "
            f"(0 to {config.devices - 1})"
        )
    if partition == "dirichlet":
        shares = partition_dirichlet(ds, config.devices, alpha=config.alpha, seed=config.seed)
    else:
        shares = partition_iid(ds, config.devices, seed=config.seed)
    return shares[config.subject]


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
            **config.model_dump(mode="json", include=ROW_CHOICE),
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
