"""Federated averaging in one pass: a running weighted sum, memory independent of fleet size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ValidationError

Tensors = Mapping[str, npt.NDArray[Any]]


class WeightedMean:
    """Adds updates one at a time, weighted by their example counts (FedAvg)."""

    def __init__(self) -> None:
        self._sums: dict[str, npt.NDArray[np.float64]] = {}
        self._weight = 0
        self.count = 0

    def add(self, tensors: Tensors, weight: int) -> None:
        if weight < 1:
            raise ValidationError(f"must be >= 1 (got {weight})", where="num_examples")
        if self._sums and set(tensors) != set(self._sums):
            raise ValidationError(
                f"tensor names {sorted(tensors)} differ from the round's {sorted(self._sums)}",
                where="tensors",
            )
        for name, value in tensors.items():
            if self._sums and value.shape != self._sums[name].shape:
                raise ValidationError(
                    f"shape {list(value.shape)} differs from {list(self._sums[name].shape)}",
                    where=f"tensors[{name!r}]",
                )
            if not np.all(np.isfinite(value)):
                raise ValidationError("holds NaN or Inf", where=f"tensors[{name!r}]")
        for name, value in tensors.items():
            scaled = value.astype(np.float64) * weight
            if name in self._sums:
                self._sums[name] += scaled
            else:
                self._sums[name] = scaled
        self._weight += weight
        self.count += 1

    def result(self) -> dict[str, npt.NDArray[np.float32]]:
        if not self._weight:
            raise ValidationError("no update was added", where="aggregate")
        return {name: (s / self._weight).astype(np.float32) for name, s in self._sums.items()}
