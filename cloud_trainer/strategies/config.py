"""The strategy's typed config, and the one function that turns it into a `Strategy`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.strategies.base import Accumulator, ServerOptimizer, Strategy
from cloud_trainer.strategies.fedavg import FedAvgAccumulator
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
)

StrategyName = Literal[
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum"
]


class StrategyConfig(BaseModel):
    """How the server combines a round's updates and applies the result.

    fedavg/fedavgm/fedadam/fedyogi/fedadagrad average deltas weighted by example count, then take
    the named server step; median/trimmed_mean/krum combine unweighted and robustly, then take
    FedAvg's step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: StrategyName = Field(
        default="fedavg",
        description="Aggregation rule: weighted mean plus a server optimizer (fedavg, fedavgm, "
        "fedadam, fedyogi, fedadagrad) or a Byzantine-robust rule (median, trimmed_mean, krum).",
    )
    server_lr: float = Field(
        default=1.0,
        gt=0,
        description="Server learning rate η. 1.0 makes fedavg plain FedAvg (and the robust rules "
        "apply their result as is); for fedadam/fedyogi/fedadagrad use 0.01-0.1, because their "
        "first steps move each coordinate by about η(1-β1)/√(1-β2) whatever the delta's size.",
    )
    momentum: float = Field(
        default=0.9,
        ge=0,
        lt=1,
        description="fedavgm: server momentum β (m = β·m + Δ, x += server_lr·m); with "
        "server_lr 1.0 the step settles at 1/(1-β) times FedAvg's once deltas agree.",
    )
    beta1: float = Field(
        default=0.9, ge=0, lt=1, description="Momentum decay β1 of the adaptive optimizers."
    )
    beta2: float = Field(
        default=0.99,
        ge=0,
        lt=1,
        description="Second-moment decay β2 of fedadam and fedyogi (fedadagrad has none).",
    )
    tau: float = Field(
        default=1e-3,
        gt=0,
        description="Adaptivity τ of the adaptive optimizers: added to √v, it caps the step at "
        "η·|m|/τ where v is tiny; larger values make them behave more like momentum SGD.",
    )
    trim_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="trimmed_mean: share of values cut from EACH end per coordinate "
        "(⌊trim_fraction·n⌋ smallest and as many largest); it tolerates that many hostile updates.",
    )
    krum_byzantine: int = Field(
        default=1,
        ge=0,
        description="krum: f, the number of hostile updates tolerated; a round needs n >= 2f+3.",
    )
    krum_select: int = Field(
        default=1,
        ge=1,
        description="krum: m, how many best-scored updates to average (1 is Krum, more is "
        "multi-Krum); must not exceed n-f in a round.",
    )


def build_strategy(config: StrategyConfig) -> Strategy:
    """The `Strategy` a config names, with its settings bound."""
    return Strategy(config.name, _optimizer(config), _accumulator_factory(config))


def _optimizer(config: StrategyConfig) -> ServerOptimizer:
    lr, beta1, beta2, tau = config.server_lr, config.beta1, config.beta2, config.tau
    match config.name:
        case "fedadagrad":
            return FedAdagradOptimizer(lr, beta1=beta1, tau=tau)
        case "fedadam":
            return FedAdamOptimizer(lr, beta1=beta1, tau=tau, beta2=beta2)
        case "fedyogi":
            return FedYogiOptimizer(lr, beta1=beta1, tau=tau, beta2=beta2)
        case "fedavgm":
            return FedAvgMOptimizer(lr, momentum=config.momentum)
        case _:  # fedavg, and the robust rules, which apply their result as FedAvg does
            return FedAvgOptimizer(lr)


def _accumulator_factory(config: StrategyConfig) -> Callable[[], Accumulator]:
    match config.name:
        case "median":
            return MedianAccumulator
        case "trimmed_mean":
            return partial(TrimmedMeanAccumulator, config.trim_fraction)
        case "krum":
            return partial(KrumAccumulator, config.krum_byzantine, config.krum_select)
        case _:  # fedavg and the adaptive optimizers average by example count
            return FedAvgAccumulator
