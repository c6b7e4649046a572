"""The aggregation interface: accumulators combine one round's deltas, server optimizers apply them.

A round's work is split in two so that every strategy fits one loop:

    accumulator = strategy.new_accumulator()
    for delta, weight in updates:          # decoded, validated, de-duplicated upstream
        accumulator.add(delta, weight)
    new_model, new_state = strategy.optimizer.step(model, accumulator.result(), state)

An `Accumulator` turns many deltas (device model minus the round's base model) into one
aggregated delta; a `ServerOptimizer` turns that delta into the next global model. Both are pure
numpy: no I/O, no clock, no torch, so the same code runs in the trainer, in tests and in
benchmarks, and a replay of the same updates in the same order gives bit-identical models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bus.errors import FleetlearnError

Arrays = dict[str, npt.NDArray[np.float32]]
"""What strategies return: tensor name -> float32 array."""

ArraysIn = Mapping[str, npt.NDArray[Any]]
"""What strategies accept: tensor name -> array of any real dtype (read-only views are fine)."""


class StrategyError(FleetlearnError, ValueError):
    """Updates, weights, state or settings an aggregation strategy cannot use.

    A `ValueError` (bad values, not a failing service) that also joins fleetlearn's error tree, so
    a service loop catching `FleetlearnError` sees it. The message names what was wrong and where,
    e.g. ``tensors['w']: shape [3] differs from [2]``.
    """


class Accumulator(Protocol):
    """One round's (or one async buffer's) updates, added one at a time."""

    @property
    def count(self) -> int:
        """How many updates were accepted."""
        ...

    @property
    def total_weight(self) -> float:
        """The sum of the accepted updates' weights (as float32 values, see `add`)."""
        ...

    def add(self, delta: ArraysIn, weight: float, *, finite: bool = False) -> None:
        """Take one update; `weight` must be > 0 and finite.

        A rejected update (StrategyError) leaves the accumulator as it was, so a service can drop
        the one bad update and keep the round.
        """
        ...

    def result(self) -> Arrays:
        """The aggregated delta as new float32 arrays; the accumulator stays usable.

        StrategyError if nothing (or too little for the strategy) was added.
        """
        ...


class ServerOptimizer(Protocol):
    """Applies an aggregated delta to the global model (Reddi et al. 2021's server step)."""

    def step(self, model: ArraysIn, delta: ArraysIn, state: ArraysIn) -> tuple[Arrays, Arrays]:
        """Return (new model, new state) without mutating any input.

        `state` is ``{}`` before the first step; afterwards it is a flat name -> float32 array
        mapping (e.g. ``m/<tensor>``, ``v/<tensor>``) so a checkpoint can store it as tensors.
        Every model tensor comes back with the model's dtype (typed as `Arrays` for simplicity:
        non-float tensors such as BatchNorm's int64 counters keep their dtype and value).
        """
        ...


@dataclass(frozen=True)
class Strategy:
    """A named pair: how to combine a round's deltas, and how to apply the result on the server."""

    name: str
    optimizer: ServerOptimizer
    accumulator_factory: Callable[[], Accumulator] = field(repr=False)

    def new_accumulator(self) -> Accumulator:
        """A fresh, empty accumulator for one round (or one async buffer)."""
        return self.accumulator_factory()

    def aggregate(self, updates: Iterable[tuple[ArraysIn, float]]) -> Arrays:
        """Feed (delta, weight) pairs to a fresh accumulator and return its result."""
        accumulator = self.new_accumulator()
        for delta, weight in updates:
            accumulator.add(delta, weight)
        return accumulator.result()
