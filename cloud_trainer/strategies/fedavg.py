"""FedAvg's weighted mean Σ wᵢΔᵢ / Σ wᵢ, streamed: one float32 sum per tensor, whatever the count.

This is the trainer's hot path (and the one benchmarked against Flower and a plain numpy
``acc += w * a``), so `add` never keeps an update and, on the common input (C-contiguous,
aligned float32), allocates no array data: the finiteness check is BLAS ``sasum`` (NaN and
infinity propagate through a sum of magnitudes; only on a non-finite answer is the exact,
allocating ``np.isfinite`` consulted) and the accumulation is BLAS ``saxpy`` writing into the
sum in place.
Other inputs (float16/float64/int, unaligned or strided views) are first converted into one
float32 scratch buffer per tensor, allocated on first use and reused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.linalg.blas import sasum, saxpy

from cloud_trainer.strategies.base import Arrays, ArraysIn, StrategyError
from cloud_trainer.strategies.checks import TensorLayout, check_weight, label, require_finite

# BLAS here takes 32-bit lengths: larger tensors go through it in slices of this many elements.
_BLAS_CHUNK = 2**30

_F32 = npt.NDArray[np.float32]


def _blas_view(array: npt.NDArray[Any]) -> _F32 | None:
    """A flat view BLAS reads without copying, or None (f2py would silently copy the input)."""
    flags = array.flags
    if array.dtype == np.float32 and flags.c_contiguous and flags.aligned:
        return array if array.ndim == 1 else array.reshape(-1)
    return None


def _axpy_in_place(x: _F32, y: _F32, a: np.float32) -> None:
    """y += a * x in place. f2py hands our own contiguous float32 `y` to BLAS as is; should a
    SciPy build ever return a copy instead, copy it back rather than lose the update."""
    if y.size <= _BLAS_CHUNK:  # the common case, without slicing (small tensors are many)
        out = saxpy(x, y, a=a)
        if out is not y:
            np.copyto(y, out)
        return
    for start in range(0, y.size, _BLAS_CHUNK):
        _axpy_in_place(x[start : start + _BLAS_CHUNK], y[start : start + _BLAS_CHUNK], a)


def _maybe_nonfinite(flat: _F32) -> bool:
    """True when `flat` may hold NaN/inf (or its |sum| overflows): one fast pass, no allocation."""
    if flat.size <= _BLAS_CHUNK:
        return not math.isfinite(sasum(flat))
    return any(
        _maybe_nonfinite(flat[start : start + _BLAS_CHUNK])
        for start in range(0, flat.size, _BLAS_CHUNK)
    )


class FedAvgAccumulator:
    """Streaming weighted mean of deltas; memory is one float32 array per tensor.

    Weights are example counts, possibly times a staleness factor (`staleness_weight`). Each is
    rounded to float32 once and that value is used both in the sum and in `total_weight`, so
    averaging copies of one update returns it to float32 rounding.
    """

    def __init__(self) -> None:
        self._layout: TensorLayout | None = None
        self._sums: dict[str, _F32] = {}
        self._flat_sums: dict[str, _F32] = {}
        self._scratch: dict[str, _F32] = {}
        self._count = 0
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(self, delta: ArraysIn, weight: float, *, finite: bool = False) -> None:
        """Add `weight` × `delta` to the sums; on StrategyError nothing was added.

        `finite=True` says the caller has already proven every value finite (the trainer's
        update validation does, in the same pass as the norm), so the check is not repeated.
        """
        w = check_weight(weight)
        layout = self._layout or TensorLayout.of(delta)
        arrays = layout.check(delta)
        # Check every tensor before touching any sum, so a rejected update leaves no trace.
        sources = [(name, self._source(name, array, finite)) for name, array in arrays.items()]
        if self._layout is None:
            self._start(layout)
        for name, flat in sources:
            if flat is not None:
                _axpy_in_place(flat, self._flat_sums[name], w)
        self._count += 1
        self._total_weight += float(w)

    def result(self) -> Arrays:
        """The weighted mean as new float32 arrays."""
        if self._count == 0:
            raise StrategyError("no update was added: FedAvg has nothing to average")
        total = np.float32(self._total_weight)
        means: Arrays = {}
        for name, total_sum in self._sums.items():
            mean = np.divide(total_sum, total, out=np.empty_like(total_sum))  # 0-d stays an array
            if not np.isfinite(mean).all():
                raise StrategyError(
                    f"{label(name)}: the weighted mean is not finite: the weighted sum "
                    "overflowed float32 (updates or weights far too large)"
                )
            means[name] = mean
        return means

    def _start(self, layout: TensorLayout) -> None:
        self._layout = layout
        for name, shape in layout.shapes.items():
            self._sums[name] = np.zeros(shape, dtype=np.float32)
            self._flat_sums[name] = self._sums[name].reshape(-1)

    def _source(self, name: str, array: npt.NDArray[Any], finite: bool) -> _F32 | None:
        """One tensor as flat, C-contiguous float32 for BLAS, checked finite; None if empty.

        A view of the input when BLAS can read it as is, else the tensor's scratch buffer.
        """
        if array.size == 0:
            return None
        flat = _blas_view(array)
        if flat is None:
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = np.empty(array.shape, dtype=np.float32)
            # Strided, unaligned or non-float32 input: numpy converts it block by block into
            # the scratch buffer, never through a full-size temporary.
            with np.errstate(over="ignore"):  # a value past float32's range is rejected below
                np.copyto(scratch, array, casting="same_kind")
            flat = scratch.reshape(-1)
        if not finite and _maybe_nonfinite(flat):
            require_finite(name, flat)
        return flat


def fedavg(updates: Iterable[tuple[ArraysIn, float]]) -> Arrays:
    """The weighted mean Σ wᵢΔᵢ / Σ wᵢ of (delta, weight) pairs, streamed."""
    accumulator = FedAvgAccumulator()
    for delta, weight in updates:
        accumulator.add(delta, weight)
    return accumulator.result()
