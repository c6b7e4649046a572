"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean and (multi-)Krum.

These rules are unweighted on purpose: a weight (an example count) is a claim made by the sender,
and a hostile device would simply claim a huge one, so weighting would hand it the round back.
Weights are still validated (> 0, finite) and summed into `total_weight` for reporting.

Unlike FedAvg they must buffer the round: a median or a ranking needs every update at once, so
memory is n × model size (float32) plus, while combining, one stacked tensor at a time. Sums run
in float64 and are rounded to float32 once, so k copies of one update give it back exactly and
the result does not depend on the order updates arrived in (values are sorted or ranked first).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from cloud_trainer.strategies.base import Arrays, ArraysIn, StrategyError
from cloud_trainer.strategies.checks import TensorLayout, check_weight, require_finite

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]

# Elements per float64 block when computing Krum's pairwise distances (32 MiB).
_DISTANCE_BLOCK = 1 << 22


class BufferedAccumulator(ABC):
    """Keeps a float32 copy of every update (the caller may reuse its buffers); subclasses
    combine them in `_combine` (template method: guards here, arithmetic there)."""

    _rule: ClassVar[str]  # the rule's name, for error messages

    def __init__(self) -> None:
        self._layout: TensorLayout | None = None
        self._updates: list[Arrays] = []
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        return len(self._updates)

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(self, delta: ArraysIn, weight: float, *, finite: bool = False) -> None:
        """Buffer a float32 copy of `delta`; the weight is checked but not used (see module).

        The copy is always checked finite (`finite` is accepted for the common interface):
        it is cheap next to what these strategies do with the buffered updates."""
        w = check_weight(weight)
        layout = self._layout or TensorLayout.of(delta)
        copy: Arrays = {}
        for name, array in layout.check(delta).items():
            copy[name] = np.array(array, dtype=np.float32)
            require_finite(name, copy[name])
        self._layout = layout
        self._updates.append(copy)
        self._total_weight += float(w)

    def result(self) -> Arrays:
        """The combined delta as new float32 arrays."""
        self._check_count(len(self._updates))
        # numpy reduces a 0-d tensor's stack to a scalar; callers get arrays, always.
        return {name: np.asarray(value, np.float32) for name, value in self._combine().items()}

    def _check_count(self, n: int) -> None:
        """Raise StrategyError when `n` updates are too few for the rule (here: none)."""
        if n == 0:
            raise StrategyError(f"no update was added: {self._rule} has nothing to combine")

    @abstractmethod
    def _combine(self) -> Arrays:
        """Combine the buffered updates (at least one, and enough for the rule)."""

    def _stack(self, name: str) -> _F32:
        """One tensor of every buffered update, stacked along a new first axis."""
        return np.stack([update[name] for update in self._updates])

    def _names(self) -> list[str]:
        assert self._layout is not None  # set by the first add, and result() checked there was one
        return list(self._layout.shapes)


class MedianAccumulator(BufferedAccumulator):
    """Coordinate-wise median (np.median over the stacked updates, per tensor).

    For an even count the two middle values are averaged in float64, so two huge float32 values
    cannot overflow and copies of one value give that value back exactly.
    """

    _rule = "median"

    def _combine(self) -> Arrays:
        n = len(self._updates)
        upper = n // 2
        result: Arrays = {}
        for name in self._names():
            if n % 2:
                part = np.partition(self._stack(name), upper, axis=0)
                result[name] = part[upper].copy()
            else:
                part = np.partition(self._stack(name), [upper - 1, upper], axis=0)
                middle = part[upper - 1 : upper + 1].astype(np.float64)
                result[name] = ((middle[0] + middle[1]) / 2).astype(np.float32)
        return result


class TrimmedMeanAccumulator(BufferedAccumulator):
    """Per coordinate: drop the ⌊β·n⌋ smallest and ⌊β·n⌋ largest values, average the rest."""

    _rule = "trimmed mean"

    def __init__(self, trim_fraction: float) -> None:
        super().__init__()
        if not 0 <= trim_fraction < 0.5:
            raise StrategyError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
        self.trim_fraction = trim_fraction

    def _check_count(self, n: int) -> None:
        super()._check_count(n)
        cut = math.floor(self.trim_fraction * n)
        if n - 2 * cut < 1:  # cannot happen for β < 0.5, kept as the rule's own guard
            raise StrategyError(
                f"trimmed mean of {n} updates with trim_fraction {self.trim_fraction} "
                "leaves nothing to average"
            )

    def _combine(self) -> Arrays:
        n = len(self._updates)
        cut = math.floor(self.trim_fraction * n)
        result: Arrays = {}
        for name in self._names():
            # Sorting (not partitioning) makes the sum's order, and so its rounding, depend only
            # on the values, never on the order the updates arrived in.
            kept = np.sort(self._stack(name), axis=0)[cut : n - cut]
            result[name] = (kept.sum(axis=0, dtype=np.float64) / (n - 2 * cut)).astype(np.float32)
        return result


class KrumAccumulator(BufferedAccumulator):
    """(Multi-)Krum, Blanchard et al. 2017: average the `select` updates whose n−f−2 nearest
    neighbours are closest (squared L2 over all tensors flattened together).

    Needs n ≥ 2f+3 updates, and select ≤ n−f (averaging more would have to admit a hostile one).
    Equal scores are ranked by arrival order, so the choice is deterministic.
    """

    _rule = "Krum"

    def __init__(self, byzantine: int, select: int = 1) -> None:
        super().__init__()
        if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
            raise StrategyError(f"krum byzantine (f) must be an integer >= 0, got {byzantine!r}")
        if isinstance(select, bool) or not isinstance(select, int) or select < 1:
            raise StrategyError(f"krum select (m) must be an integer >= 1, got {select!r}")
        self.byzantine = byzantine
        self.select = select

    def scores(self) -> _F64:
        """Each buffered update's Krum score (lower is more central), in arrival order."""
        self._check_count(len(self._updates))
        distances = np.zeros((len(self._updates),) * 2, dtype=np.float64)
        for name in self._names():
            distances += _squared_distances(self._stack(name))
        neighbours = len(self._updates) - self.byzantine - 2
        return np.array(
            [np.sort(np.delete(row, i))[:neighbours].sum() for i, row in enumerate(distances)],
            dtype=np.float64,
        )

    def _check_count(self, n: int) -> None:
        super()._check_count(n)
        f = self.byzantine
        if n < 2 * f + 3:
            raise StrategyError(f"Krum needs n >= 2f+3 updates: got n={n} with f={f}")
        if self.select > n - f:
            raise StrategyError(
                f"multi-Krum select m={self.select} exceeds n-f={n - f} (n={n}, f={f}): "
                "averaging that many could admit a hostile update"
            )

    def _combine(self) -> Arrays:
        chosen = np.argsort(self.scores(), kind="stable")[: self.select]
        result: Arrays = {}
        for name in self._names():
            picked = [self._updates[i][name] for i in chosen]
            if self.select == 1:
                result[name] = picked[0].copy()
            else:
                total = np.stack(picked).sum(axis=0, dtype=np.float64)  # added in rank order
                result[name] = (total / self.select).astype(np.float32)
        return result


def _squared_distances(stack: _F32) -> _F64:
    """Pairwise squared L2 distances between the rows of `stack` (n, ...), in float64.

    Direct differences rather than the Gram-matrix identity: |a|²+|b|²−2a·b cancels badly for
    close updates (copies would not come out at exactly 0). Rows are processed in blocks so the
    float64 temporary stays near `_DISTANCE_BLOCK` elements.
    """
    n = stack.shape[0]
    rows = stack.reshape(n, -1)
    out = np.zeros((n, n), dtype=np.float64)
    block = max(1, _DISTANCE_BLOCK // max(1, rows.shape[1]))
    for i in range(n - 1):
        for start in range(i + 1, n, block):
            stop = min(n, start + block)
            diff = np.subtract(rows[start:stop], rows[i], dtype=np.float64)
            np.square(diff, out=diff)
            out[i, start:stop] = diff.sum(axis=1)
    return out + out.T


def _feed(accumulator: BufferedAccumulator, updates: Iterable[ArraysIn]) -> BufferedAccumulator:
    for delta in updates:
        accumulator.add(delta, 1.0)
    return accumulator


def coordinate_median(updates: Iterable[ArraysIn]) -> Arrays:
    """Coordinate-wise median of the deltas (unweighted)."""
    return _feed(MedianAccumulator(), updates).result()


def trimmed_mean(updates: Iterable[ArraysIn], trim_fraction: float) -> Arrays:
    """Per-coordinate mean after cutting ⌊trim_fraction·n⌋ values from each end (unweighted)."""
    return _feed(TrimmedMeanAccumulator(trim_fraction), updates).result()


def krum(updates: Iterable[ArraysIn], byzantine: int, select: int = 1) -> Arrays:
    """(Multi-)Krum: the mean of the `select` best-scored deltas, tolerating `byzantine` (f)."""
    return _feed(KrumAccumulator(byzantine, select), updates).result()


def krum_scores(updates: Iterable[ArraysIn], byzantine: int) -> _F64:
    """Krum scores in input order (lower is more central); for logging which devices lost out."""
    accumulator = KrumAccumulator(byzantine)
    _feed(accumulator, updates)
    return accumulator.scores()
