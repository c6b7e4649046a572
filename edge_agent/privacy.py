"""Differential privacy on the device: clip and noise an update, and account for what it spent.

One round's update is a Gaussian mechanism over the device's data: clipping its global L2 norm
to C bounds how much the whole local data set can move it (sensitivity C), and noise of standard
deviation σ = z·C then hides any one device's contribution. Because the clip bounds the update of
all the device's samples together, the guarantee protects the device (user-level DP), not only
single samples. The accountant composes the rounds in zero-concentrated DP (Bun & Steinke 2016,
"Concentrated Differential Privacy: Simplifications, Extensions, and Lower Bounds"): a Gaussian
mechanism with sensitivity C and noise σ is ρ-zCDP with ρ = C²/(2σ²) = 1/(2z²) (Prop. 1.6), ρ adds
up over releases (Lemma 2.3), and ρ-zCDP implies (ρ + 2·sqrt(ρ·ln(1/δ)), δ)-DP (Prop. 1.3).

numpy only: a device that trains elsewhere (or a test) can use this without torch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError, ValidationError
from bus.protocol import Privacy
from bus.store.file import fsync_dir

STATE_SCHEMA = 1


def global_norm(delta: Mapping[str, npt.NDArray[Any]]) -> float:
    """The L2 norm of all float tensors together (accumulated in float64); others are ignored."""
    total = 0.0
    for value in delta.values():
        if value.dtype.kind == "f":
            flat = value.reshape(-1).astype(np.float64, copy=False)
            total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_and_noise(
    delta: Mapping[str, npt.NDArray[Any]],
    clip_norm: float,
    noise_multiplier: float | None,
    rng: np.random.Generator,
) -> tuple[dict[str, npt.NDArray[Any]], float]:
    """The update clipped to `clip_norm` and noised, and its norm before clipping.

    The float tensors are scaled together by min(1, clip_norm / norm), so the update keeps its
    direction; then every float entry gets N(0, (noise_multiplier·clip_norm)²). Non-float
    tensors (counters such as BatchNorm's `num_batches_tracked`) pass through as copies: they
    carry a new value, not a difference, and are not part of what the guarantee covers.
    `noise_multiplier` None or 0 clips only. Float tensors keep their dtype.

    `rng` must be unpredictable to whoever receives the update (seeded from OS entropy in
    production): noise that the server can regenerate protects nothing.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be a positive finite number, got {clip_norm}")
    sigma = _noise_multiplier(noise_multiplier) * clip_norm
    norm = global_norm(delta)
    if not math.isfinite(norm):
        raise ValidationError("the update holds NaN or Inf; it cannot be clipped", where="delta")
    scale = clip_norm / norm if norm > clip_norm else 1.0
    result: dict[str, npt.NDArray[Any]] = {}
    for name, value in delta.items():
        if value.dtype.kind != "f":
            result[name] = np.array(value, copy=True)
            continue
        out = np.multiply(value, scale, dtype=value.dtype)
        if sigma > 0:
            out += rng.normal(0.0, sigma, size=value.shape).astype(value.dtype, copy=False)
        result[name] = out
    return result, norm


def rho_per_release(noise_multiplier: float) -> float:
    """zCDP cost of one Gaussian release with σ = noise_multiplier · sensitivity: 1/(2z²)."""
    z = _noise_multiplier(noise_multiplier)
    return math.inf if z == 0 else 1.0 / (2.0 * z * z)


def epsilon(rho: float, delta: float) -> float:
    """The ε of the (ε, δ)-DP that ρ-zCDP implies: ρ + 2·sqrt(ρ·ln(1/δ))."""
    if not 0 < delta < 1:
        raise ConfigError(f"privacy delta must be in (0, 1), got {delta}")
    if rho < 0 or math.isnan(rho):
        raise ConfigError(f"rho must be ≥ 0, got {rho}")
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


class PrivacyAccountant:
    """The device's cumulative privacy loss, kept in a small JSON file across restarts.

    Every release is counted as if it were on the same data (conservative: the buffer's window
    overlaps from round to round). A release without noise makes the guarantee void for good:
    from then on `spend` returns None, meaning the device reports no guarantee. The file is
    rewritten atomically (temporary file, fsync, rename, directory fsync) before `spend`
    returns, so call `spend` before the update leaves the device: a crash can then over-count
    a release that was never sent, never under-count one that was. A file that cannot be read
    is an error, never a reset budget.
    """

    def __init__(self, path: Path, delta: float) -> None:
        if not 0 < delta < 1:
            raise ConfigError(f"privacy delta must be in (0, 1), got {delta}")
        self.path = path
        self.delta = delta
        self._lock = threading.Lock()
        self._rho, self._releases, self._unbounded = self._load()

    @property
    def rho(self) -> float:
        """Total zCDP ρ so far (inf once a release went out without noise)."""
        return math.inf if self._unbounded else self._rho

    @property
    def releases(self) -> int:
        return self._releases

    def privacy(self) -> Privacy | None:
        """The cumulative (ε, δ) so far; None when there is no finite guarantee."""
        if self._unbounded:
            return None
        return Privacy(epsilon=epsilon(self._rho, self.delta), delta=self.delta)

    def spend(self, noise_multiplier: float | None) -> Privacy | None:
        """Record one release with this noise multiplier; the cumulative (ε, δ) after it.

        None or 0 records a release without noise: ε is infinite, which `Privacy` cannot carry,
        so the result is None (no guarantee), now and for every later release.
        """
        cost = rho_per_release(noise_multiplier or 0.0)
        with self._lock:
            unbounded = self._unbounded or math.isinf(cost)
            rho = self._rho if math.isinf(cost) else self._rho + cost
            self._save(rho, self._releases + 1, unbounded)
            self._rho, self._releases, self._unbounded = rho, self._releases + 1, unbounded
            return self.privacy()

    def _load(self) -> tuple[float, int, bool]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0.0, 0, False
        try:
            state = json.loads(data)
            rho, releases, unbounded = state["rho"], state["releases"], state["unbounded"]
            if state["schema"] != STATE_SCHEMA:
                raise ValueError(f"schema {state['schema']!r} is not {STATE_SCHEMA}")
            if not (isinstance(rho, int | float) and math.isfinite(rho) and rho >= 0):
                raise ValueError(f"rho must be a finite number ≥ 0, got {rho!r}")
            if not (isinstance(releases, int) and releases >= 0) or not isinstance(unbounded, bool):
                raise ValueError("releases must be an integer ≥ 0 and unbounded a boolean")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(
                f"privacy budget file is unreadable ({exc}); it is not reset automatically: "
                "restore it, or delete it knowing that the budget spent so far is forgotten",
                where=str(self.path),
            ) from exc
        return float(rho), releases, unbounded

    def _save(self, rho: float, releases: int, unbounded: bool) -> None:
        state = {"schema": STATE_SCHEMA, "rho": rho, "releases": releases, "unbounded": unbounded}
        data = json.dumps(state, sort_keys=True).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)


def _noise_multiplier(value: float | None) -> float:
    z = 0.0 if value is None else float(value)
    if not (math.isfinite(z) and z >= 0):
        raise ConfigError(f"noise_multiplier must be a finite number ≥ 0, got {value}")
    return z
