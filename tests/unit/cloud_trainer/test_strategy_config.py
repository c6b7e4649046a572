"""StrategyConfig validation and what build_strategy makes of each name."""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import pydantic
import pytest

from cloud_trainer.strategies import (
    FedAdagradOptimizer,
    FedAdamOptimizer,
    FedAvgAccumulator,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    FedYogiOptimizer,
    KrumAccumulator,
    MedianAccumulator,
    StrategyConfig,
    StrategyName,
    TrimmedMeanAccumulator,
    build_strategy,
)

EXPECTED = {
    "fedavg": (FedAvgOptimizer, FedAvgAccumulator),
    "fedavgm": (FedAvgMOptimizer, FedAvgAccumulator),
    "fedadam": (FedAdamOptimizer, FedAvgAccumulator),
    "fedyogi": (FedYogiOptimizer, FedAvgAccumulator),
    "fedadagrad": (FedAdagradOptimizer, FedAvgAccumulator),
    "median": (FedAvgOptimizer, MedianAccumulator),
    "trimmed_mean": (FedAvgOptimizer, TrimmedMeanAccumulator),
    "krum": (FedAvgOptimizer, KrumAccumulator),
}


def test_every_name_is_built() -> None:
    assert set(get_args(StrategyName)) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_strategy(name: str) -> None:
    strategy = build_strategy(StrategyConfig(name=name, server_lr=0.5))
    optimizer, accumulator = EXPECTED[name]
    assert strategy.name == name
    assert type(strategy.optimizer) is optimizer
    assert strategy.optimizer.server_lr == 0.5  # type: ignore[attr-defined]
    assert type(strategy.new_accumulator()) is accumulator
    assert strategy.new_accumulator() is not strategy.new_accumulator()


def test_settings_reach_the_parts() -> None:
    config = StrategyConfig(
        name="krum", krum_byzantine=2, krum_select=3, beta1=0.5, beta2=0.6, tau=0.1
    )
    accumulator = build_strategy(config).new_accumulator()
    assert isinstance(accumulator, KrumAccumulator)
    assert (accumulator.byzantine, accumulator.select) == (2, 3)
    trimmed = build_strategy(StrategyConfig(name="trimmed_mean", trim_fraction=0.3))
    assert trimmed.new_accumulator().trim_fraction == 0.3  # type: ignore[attr-defined]
    adam = build_strategy(config.model_copy(update={"name": "fedadam"})).optimizer
    assert adam == FedAdamOptimizer(server_lr=1.0, beta1=0.5, beta2=0.6, tau=0.1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_round_end_to_end(name: str) -> None:
    strategy = build_strategy(StrategyConfig(name=name, server_lr=0.1))
    model: dict[str, npt.NDArray[Any]] = {
        "w": np.zeros(2, np.float32),
        "steps": np.array(4, np.int64),
    }
    updates = [({"w": np.array([1.0, -1.0], np.float32) * (1 + i / 10)}, 10.0) for i in range(5)]
    new_model, state = strategy.optimizer.step(model, strategy.aggregate(updates), {})
    assert new_model["w"][0] > 0 > new_model["w"][1]
    assert int(new_model["steps"]) == 4
    assert (state == {}) == (name not in {"fedavgm", "fedadam", "fedyogi", "fedadagrad"})


def test_defaults() -> None:
    config = StrategyConfig()
    assert (config.name, config.server_lr, config.beta1, config.beta2) == ("fedavg", 1.0, 0.9, 0.99)
    assert (config.tau, config.trim_fraction) == (1e-3, 0.1)
    assert (config.krum_byzantine, config.krum_select) == (1, 1)


def test_every_field_is_documented() -> None:
    assert all(field.description for field in StrategyConfig.model_fields.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "fedprox"),
        ("server_lr", 0.0),
        ("server_lr", float("inf")),
        ("beta1", 1.0),
        ("beta2", -0.1),
        ("tau", 0.0),
        ("trim_fraction", 0.5),
        ("krum_byzantine", -1),
        ("krum_select", 0),
        ("unknown", 1),
    ],
)
def test_rejects(field: str, value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        StrategyConfig(**{field: value})


def test_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        StrategyConfig().server_lr = 2.0  # type: ignore[misc]
