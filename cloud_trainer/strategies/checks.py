"""The contract every update in one accumulator meets: same names and shapes, real numbers, a
positive weight. Shared by all accumulators so that they reject the same things in the same words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_trainer.strategies.base import ArraysIn, StrategyError

# Integers are accepted (and averaged as float32) because a model's counters, e.g. BatchNorm's
# num_batches_tracked, may travel with the deltas; the server optimizer ignores them anyway.
_REAL_KINDS = "fiu"


def label(name: str) -> str:
    """How errors name a tensor: ``tensors['fc.weight']``."""
    return f"tensors[{name!r}]"


def check_weight(weight: float) -> np.float32:
    """The weight as the float32 the arithmetic will use; > 0 and finite, else StrategyError.

    Rounding to float32 once, here, lets numerator and denominator of a weighted mean use the
    very same value, so k copies of one update average back to that update.
    """
    if isinstance(weight, bool) or not isinstance(weight, Real):
        raise StrategyError(f"weight must be a real number, got {weight!r}")
    value = float(weight)
    if not math.isfinite(value) or value <= 0:
        raise StrategyError(f"weight must be > 0 and finite, got {value!r}")
    as_f32 = np.float32(value)
    if not math.isfinite(as_f32) or as_f32 <= 0:
        raise StrategyError(f"weight {value!r} does not fit a positive finite float32")
    return as_f32


def real_array(name: str, value: Any) -> npt.NDArray[Any]:
    """`value` as an array (no copy when it already is one) with a real number dtype."""
    array = np.asarray(value)
    if array.dtype.kind not in _REAL_KINDS:
        raise StrategyError(f"{label(name)}: dtype {array.dtype} is not a real number type")
    return array


def require_finite(name: str, array: npt.NDArray[Any]) -> None:
    """StrategyError naming the tensor when it holds NaN or an infinity."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise StrategyError(f"{label(name)}: holds NaN or infinity")


class TensorLayout:
    """Tensor names and shapes, fixed by the first update; every later update must match."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    @classmethod
    def of(cls, delta: ArraysIn) -> TensorLayout:
        """The layout the first update sets (in its order, which results keep)."""
        if not isinstance(delta, Mapping):
            raise StrategyError(f"an update must map tensor names to arrays, got {type(delta)}")
        if not delta:
            raise StrategyError("an update holds no tensors")
        for name in delta:
            if not isinstance(name, str):
                raise StrategyError(f"tensor names must be strings, got {name!r}")
        return cls({name: np.shape(value) for name, value in delta.items()})

    def check(self, delta: ArraysIn) -> dict[str, npt.NDArray[Any]]:
        """The update's arrays in layout order, or StrategyError naming the first mismatch."""
        if delta.keys() != self.shapes.keys():
            missing = sorted(self.shapes.keys() - delta.keys())
            unexpected = sorted(delta.keys() - self.shapes.keys(), key=str)
            raise StrategyError(
                "tensor names differ from the first update's: "
                f"missing {missing}, unexpected {unexpected}"
            )
        arrays = {}
        for name, shape in self.shapes.items():
            array = real_array(name, delta[name])
            if array.shape != shape:
                raise StrategyError(
                    f"{label(name)}: shape {list(array.shape)} differs from {list(shape)}"
                )
            arrays[name] = array
        return arrays
