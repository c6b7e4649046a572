"""Deal a Dataset's rows to simulated devices: per subject, IID, or with Dirichlet label skew.

Pure functions of the data and a seed: the same call gives the same devices, every row lands
on exactly one device, and nothing else is touched.
"""

from __future__ import annotations

import numpy as np

from bus.errors import ConfigError, ValidationError
from models.datasets.base import Dataset, Rows

# Dirichlet draws are retried until every device holds min_size rows; this bounds the retries.
MAX_DRAWS = 1000


def _check_devices(ds: Dataset, devices: int, min_size: int = 1) -> None:
    if devices < 1:
        raise ConfigError(f"devices must be at least 1, not {devices}")
    if devices * min_size > len(ds):
        raise ConfigError(
            f"{devices} devices × {min_size} rows each need more than the "
            f"{len(ds)} rows of dataset {ds.name!r}"
        )


def partition_iid(ds: Dataset, devices: int, *, seed: int) -> list[Dataset]:
    """A seeded shuffle dealt into ``devices`` near-equal shares (sizes differ by at most 1)."""
    _check_devices(ds, devices)
    order = np.random.default_rng(seed).permutation(len(ds))
    return [ds.subset(np.sort(part)) for part in np.array_split(order, devices)]


def partition_natural(ds: Dataset) -> list[Dataset]:
    """One device per group (subject), in ascending group order: the data's own split."""
    if ds.groups is None:
        raise ValidationError(
            f"dataset {ds.name!r} has no groups (subjects); use partition_iid or "
            "partition_dirichlet"
        )
    return [ds.subset(np.flatnonzero(ds.groups == g)) for g in np.unique(ds.groups)]


def dirichlet_rows(
    y: np.ndarray, devices: int, *, alpha: float, rng: np.random.Generator
) -> list[Rows]:
    """One draw: each class's rows split across devices by proportions ~ Dir(alpha).

    A device already holding its fair share (n / devices) gets no more of later classes, as in
    NIID-Bench (Li et al., 2022): without it a small alpha piles most rows onto one device.
    """
    shares: list[list[Rows]] = [[] for _ in range(devices)]
    sizes = np.zeros(devices, dtype=np.int64)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        weights = rng.dirichlet(np.full(devices, alpha)) * (sizes < len(y) / devices)
        if weights.sum() == 0:  # every device is full: fall back to plain proportions
            weights = np.ones(devices)
        cuts = (np.cumsum(weights / weights.sum()) * len(rows)).astype(np.int64)[:-1]
        for device, part in enumerate(np.split(rows, cuts)):
            shares[device].append(part)
            sizes[device] += len(part)
    return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shares]


def partition_dirichlet(
    ds: Dataset, devices: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[Dataset]:
    """Label skew: device label mixes drawn from Dir(alpha); small alpha = few labels per device.

    alpha → ∞ approaches IID; alpha = 0.1 leaves most devices with one or two labels. Draws
    repeat (seeded, at most MAX_DRAWS) until every device holds at least ``min_size`` rows.
    """
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, not {alpha}")
    if min_size < 0:
        raise ConfigError(f"min_size must not be negative, not {min_size}")
    _check_devices(ds, devices, min_size)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        parts = dirichlet_rows(ds.y, devices, alpha=alpha, rng=rng)
        if min(len(p) for p in parts) >= min_size:
            return [ds.subset(p) for p in parts]
    raise ConfigError(
        f"no Dirichlet draw in {MAX_DRAWS} gave each of {devices} devices {min_size} rows "
        f"of dataset {ds.name!r} at alpha={alpha}; lower min_size or devices, or raise alpha"
    )


def label_entropy(ds: Dataset) -> float:
    """Entropy (nats) of a device's label distribution: 0 for one label, log k for uniform."""
    counts = np.bincount(ds.y, minlength=len(ds.classes)).astype(np.float64)
    if counts.sum() == 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
