"""The demo's fleet: the breast-cancer table from `models.datasets`, dealt IID to devices.

Standardised with statistics from the training rows only; labels as float32 because the
demo's stand-in device model is a numpy logistic regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.datasets import load, partition_iid, standardize, train_test_split

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Shard:
    """One device's rows."""

    x: Array
    y: Array


@dataclass(frozen=True)
class FleetData:
    """Training shards per device plus a held-out test set."""

    shards: list[Shard]
    test_x: Array
    test_y: Array
    features: int


def fleet_data(*, devices: int, test_fraction: float, seed: int) -> FleetData:
    train, test = train_test_split(load("breast_cancer"), test_fraction=test_fraction, seed=seed)
    train, test = standardize(train, test)
    shards = [
        Shard(part.x, part.y.astype(np.float32))
        for part in partition_iid(train, devices, seed=seed)
    ]
    return FleetData(shards, test.x, test.y.astype(np.float32), int(train.x.shape[1]))
