"""Play one subject's rows of a real data set at a sensor's pace (demos and simulated fleets).

The rows are the subject's own (data sets with groups) or this device's IID share (without),
scaled with the whole data set's statistics like the cloud's training data, flattened to one
vector each. The index reached is saved after every batch, so a restarted device goes on
where it stopped instead of playing the same rows again.

`subject: auto` picks the subject from the device id (`pick`): a sha256 of the id, modulo the
number of subjects, over the sorted subject list (or modulo `devices`, over the shares). The
same id gets the same subject in every process and after every restart; a scaled fleet of
simulated devices spreads over the subjects as hashes do, evenly on average but not one each.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError
from edge_agent.buffer import Sample
from edge_agent.collectors.base import MAX_BATCH, Emit, PositionFile
from edge_agent.config import AUTO_SUBJECT, ReplayCollectorConfig
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


def pick(device_id: str, choices: int) -> int:
    """The index `subject: auto` takes for `device_id` among `choices` (0 to choices - 1).

    sha256 of the id's UTF-8 bytes, first 8 bytes big-endian, modulo `choices`: the same in
    every process and on every machine (unlike Python's salted `hash`).
    """
    if choices < 1:
        raise ValueError(f"nothing to pick from ({choices} choices)")
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % choices


def subject_rows(config: ReplayCollectorConfig) -> Dataset:
    """The rows this device plays: its subject's (natural) or its share (iid, dirichlet).

    With `split_seed`, only the training side of the trainer's split, scaled with that side's
    statistics exactly as the trainer scales it; otherwise every row, scaled with the whole data
    set's statistics. Token ids (tweets) and images in [0, 1] stay as they are.
    """
    return played(config)[1]


def played(config: ReplayCollectorConfig) -> tuple[int, Dataset]:
    """The subject (or share) this device plays, `auto` resolved, and its rows."""
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
        subjects = np.unique(ds.groups).tolist()  # sorted
        subject = config.subject
        if subject == AUTO_SUBJECT:
            subject = subjects[pick(_auto_key(config), len(subjects))]
        elif subject not in subjects:
            raise ConfigError(
                f"data set {config.dataset!r} has no subject {subject}; its subjects are {subjects}"
            )
        rows = ds.subset(np.flatnonzero(ds.groups == subject))
    else:
        subject, rows = _share(ds, config, partition)
    if config.shuffle:
        rows = rows.subset(np.random.default_rng(config.seed).permutation(len(rows)))
    return int(subject), rows


def _auto_key(config: ReplayCollectorConfig) -> str:
    if config.device_id is None:
        raise ConfigError(
            f"replay collector {config.name!r}: subject {AUTO_SUBJECT!r} is picked from the "
            "device id, and none is known: give the collector a `device_id` (a device's config "
            "fills in its own)"
        )
    return config.device_id


def _share(ds: Dataset, config: ReplayCollectorConfig, partition: str) -> tuple[int, Dataset]:
    if config.devices is None:
        raise ConfigError(
            f"partition {partition!r} deals data set {config.dataset!r} to devices: set "
            "`devices` (how many devices share its rows) and `subject` (this device's share, "
            f"0 to devices - 1, or {AUTO_SUBJECT!r} to pick it from the device id)"
        )
    share = config.subject
    if share == AUTO_SUBJECT:
        share = pick(_auto_key(config), config.devices)
    elif share >= config.devices:
        raise ConfigError(
            f"subject {share} is not a share of {config.devices} devices "
            f"(0 to {config.devices - 1})"
        )
    if partition == "dirichlet":
        shares = partition_dirichlet(ds, config.devices, alpha=config.alpha, seed=config.seed)
    else:
        shares = partition_iid(ds, config.devices, seed=config.seed)
    return share, shares[share]


class ReplayCollector:
    def __init__(self, config: ReplayCollectorConfig, *, state_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.subject, rows = played(config)
        if config.subject == AUTO_SUBJECT:
            log.info(
                "replay subject picked from the device id",
                extra={"collector": self.name, "device": config.device_id, "subject": self.subject},
            )
        self.features: npt.NDArray[np.float32] = np.ascontiguousarray(
            rows.x.reshape(len(rows), -1), dtype=np.float32
        )
        self.labels = rows.y.astype(np.float64)
        self._position = PositionFile(state_dir, config.name)
        # A saved index counts only for the same rows; another subject or data set starts at 0.
        # `auto` is saved as the subject it picked: a new device id means other rows.
        self._source = {
            **config.model_dump(mode="json", include=ROW_CHOICE),
            "subject": self.subject,
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
