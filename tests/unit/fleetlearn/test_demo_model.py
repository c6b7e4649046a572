"""The demo's stand-in device model and its data: real table, fixed split, it learns."""

from __future__ import annotations

import numpy as np
import pytest

from bus.errors import FleetlearnError
from fleetlearn.demo.data import fleet_data
from fleetlearn.demo.logreg import evaluate, init_params, train_local


def test_fleet_split_is_deterministic_and_disjoint() -> None:
    first = fleet_data(devices=5, test_fraction=0.2, seed=3)
    second = fleet_data(devices=5, test_fraction=0.2, seed=3)
    assert [len(s.x) for s in first.shards] == [len(s.x) for s in second.shards]
    assert all(np.array_equal(a.x, b.x) for a, b in zip(first.shards, second.shards, strict=True))
    assert sum(len(s.x) for s in first.shards) + len(first.test_x) == 569
    assert first.features == 30
    assert first.test_y.dtype == np.float32
    with pytest.raises(FleetlearnError):
        fleet_data(devices=0, test_fraction=0.2, seed=3)


def test_training_separates_a_literal_problem() -> None:
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]], dtype=np.float32)
    y = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
    start = init_params(1)
    trained = train_local(
        start, x, y, epochs=50, learning_rate=0.5, batch_size=2, rng=np.random.default_rng(0)
    )
    assert float(start["weight"][0]) == 0.0  # the caller's parameters are not modified
    assert float(trained["weight"][0]) > 1.0
    loss_before, _ = evaluate(start, x, y)
    loss_after, accuracy = evaluate(trained, x, y)
    assert loss_before == pytest.approx(np.log(2.0))
    assert loss_after < 0.2
    assert accuracy == 1.0
