"""The Wisconsin breast-cancer table that ships inside scikit-learn, split across simulated devices.

Read straight from the CSV inside the installed wheel: importing scikit-learn would pull in
scipy for nothing, and nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Shard:
    """One device's rows."""

    x: Array
    y: Array


@dataclass(frozen=True)
class FleetData:
    """Standardised training shards per device plus a held-out test set."""

    shards: list[Shard]
    test_x: Array
    test_y: Array
    features: int


def breast_cancer_csv() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the demo reads the breast-cancer table shipped in scikit-learn; "
            "install it with `pip install 'fleetlearn[data]'`"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / "breast_cancer.csv"
    if not path.is_file():
        raise ConfigError(f"scikit-learn is installed but {path} is missing")
    return path


def load_breast_cancer(path: Path | None = None) -> tuple[Array, Array]:
    """569 rows × 30 features; label 1 = benign, 0 = malignant (the file's own coding)."""
    source = path or breast_cancer_csv()
    with source.open() as handle:
        rows, cols = (int(v) for v in handle.readline().split(",")[:2])
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if table.shape != (rows, cols + 1):
        raise ConfigError(f"{source}: expected {rows}×{cols + 1} values, found {table.shape}")
    return table[:, :cols].astype(np.float32), table[:, cols].astype(np.float32)


def split_fleet(x: Array, y: Array, *, devices: int, test_fraction: float, seed: int) -> FleetData:
    """Hold out a test set, standardise with training statistics, deal the rest to devices."""
    if devices < 1 or devices > len(x) // 10:
        raise ConfigError(f"devices must be between 1 and {len(x) // 10} for {len(x)} rows")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0) + 1e-6
    scaled = ((x - mean) / std).astype(np.float32)
    shards = [Shard(scaled[rows], y[rows]) for rows in np.array_split(train, devices)]
    return FleetData(shards, scaled[test], y[test], x.shape[1])
