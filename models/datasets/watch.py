"""Smartwatch exercise recordings shipped in the seglearn wheel, cut into labelled windows.

Ten subjects wore a watch (3-axis accelerometer + 3-axis gyroscope at 50 Hz) through seven
physiotherapy exercises. Each window is labelled with its recording's exercise and grouped by
subject, so every subject can play one device. The pickled file is read with numpy alone:
importing seglearn would pull in scikit-learn and scipy.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bus.errors import ValidationError
from models.datasets.base import Dataset, package_file

NAME = "watch"
HZ = 50
CHANNELS = 6


class WatchOptions(BaseModel):
    """How recordings are cut into windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(100, ge=2, description="samples per window (100 = 2 s at 50 Hz)")
    step: int = Field(50, ge=1, description="samples between window starts (50 = half overlap)")


def watch_npy() -> Path:
    return package_file("seglearn", "data", "watch_dataset.npy")


@functools.lru_cache(maxsize=2)
def _read(path: Path) -> dict[str, Any]:
    """The file is a pickled dict: X (list of (t, 6) series), y, y_labels, subject, ..."""
    raw = np.load(path, allow_pickle=True).item()
    missing = {"X", "y", "y_labels", "subject"} - set(raw)
    if missing:
        raise ValidationError(f"{path}: keys {sorted(missing)} missing from the recording dict")
    series = [np.asarray(s, dtype=np.float32) for s in raw["X"]]
    for i, s in enumerate(series):
        if s.ndim != 2 or s.shape[1] != CHANNELS:
            raise ValidationError(f"{path}: series {i} has shape {s.shape}, expected (t, 6)")
    return {
        "series": series,
        "y": np.asarray(raw["y"], dtype=np.int64),
        "subject": np.asarray(raw["subject"], dtype=np.int64),
        "classes": tuple(str(c) for c in raw["y_labels"]),
        "channels": [str(c) for c in raw.get("X_labels", [])],
    }


def windows(series: np.ndarray, window: int, step: int) -> np.ndarray:
    """``(t, channels)`` → ``(k, channels, window)``: every full window, channels first."""
    if len(series) < window:
        return np.empty((0, series.shape[1], window), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)[::step]
    return np.ascontiguousarray(view, dtype=np.float32)


def load_watch(options: WatchOptions | None = None, path: Path | None = None) -> Dataset:
    """Windows ``(n, 6, window)`` of raw readings, labelled by exercise, grouped by subject.

    Readings are left unscaled: ``standardize(train, test)`` fits per-channel statistics on the
    training windows. Groups are the file's subject ids (1..10).
    """
    opts = options or WatchOptions()
    raw = _read(path or watch_npy())
    cut = [windows(s, opts.window, opts.step) for s in raw["series"]]
    counts = np.array([len(c) for c in cut])
    if counts.sum() == 0:
        raise ValidationError(f"no recording is as long as a window of {opts.window} samples")
    preprocessing = {
        "window": opts.window,
        "step": opts.step,
        "hz": HZ,
        "channels": raw["channels"],
    }
    return Dataset(
        NAME,
        np.concatenate(cut),
        np.repeat(raw["y"], counts),
        raw["classes"],
        np.repeat(raw["subject"], counts),
        preprocessing,
        sessions=np.repeat(np.arange(len(cut), dtype=np.int64), counts),
    )
