"""The Wisconsin breast-cancer table shipped inside scikit-learn, as a Dataset.

Read straight from the CSV in the installed wheel: importing scikit-learn would pull in scipy
for nothing, and nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from bus.errors import ValidationError
from models.datasets.base import Dataset, package_file

NAME = "breast_cancer"


def breast_cancer_csv() -> Path:
    return package_file("sklearn", "datasets", "data", "breast_cancer.csv")


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The file's header says ``rows,cols,class0,class1``; the label is the last column."""
    with path.open() as handle:
        header = handle.readline().strip().split(",")
        rows, cols = int(header[0]), int(header[1])
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if table.shape != (rows, cols + 1):
        raise ValidationError(f"{path}: expected {rows}×{cols + 1} values, found {table.shape}")
    return table[:, :cols].astype(np.float32), table[:, cols].astype(np.int64), tuple(header[2:])


def load_breast_cancer(path: Path | None = None) -> Dataset:
    """569 rows × 30 raw features; 0 = malignant, 1 = benign (the file's own coding).

    Features are left unscaled: call ``standardize(train, test)`` after splitting so the
    statistics come from training rows only.
    """
    x, y, classes = _read(path or breast_cancer_csv())
    return Dataset(NAME, x.copy(), y.copy(), classes, None, {"features": x.shape[1]})
