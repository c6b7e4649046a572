"""Aggregation strategies: pure numpy functions that combine device deltas and step the model.

Pick one with `build_strategy(StrategyConfig(...))`; per round, feed a `strategy.new_accumulator()`
each (delta, weight) and apply `accumulator.result()` with `strategy.optimizer.step`. No I/O, no
torch, no network: services call these between receiving and committing.
"""

from cloud_trainer.strategies.base import (
    Accumulator,
    Arrays,
    ArraysIn,
    ServerOptimizer,
    Strategy,
    StrategyError,
)
from cloud_trainer.strategies.config import StrategyConfig, StrategyName, build_strategy
from cloud_trainer.strategies.fedavg import FedAvgAccumulator, fedavg
from cloud_trainer.strategies.optimizers import (
    FedAdagradOptimizer,
    FedAdamOptimizer,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    FedYogiOptimizer,
)
from cloud_trainer.strategies.robust import (
    KrumAccumulator,
    MedianAccumulator,
    TrimmedMeanAccumulator,
    coordinate_median,
    krum,
    krum_scores,
    trimmed_mean,
)
from cloud_trainer.strategies.staleness import staleness_weight

__all__ = [
    "Accumulator",
    "Arrays",
    "ArraysIn",
    "FedAdagradOptimizer",
    "FedAdamOptimizer",
    "FedAvgAccumulator",
    "FedAvgMOptimizer",
    "FedAvgOptimizer",
    "FedYogiOptimizer",
    "KrumAccumulator",
    "MedianAccumulator",
    "ServerOptimizer",
    "Strategy",
    "StrategyConfig",
    "StrategyError",
    "StrategyName",
    "TrimmedMeanAccumulator",
    "build_strategy",
    "coordinate_median",
    "fedavg",
    "krum",
    "krum_scores",
    "staleness_weight",
    "trimmed_mean",
]
