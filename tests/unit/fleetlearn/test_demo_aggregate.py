"""FedAvg as a running weighted sum: literal values, and rejection of mismatched updates."""

from __future__ import annotations

import numpy as np
import pytest

from bus.errors import ValidationError
from fleetlearn.demo.aggregate import WeightedMean


def test_weighted_mean_of_literal_updates() -> None:
    mean = WeightedMean()
    mean.add(
        {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array(0.0, dtype=np.float32)},
        weight=1,
    )
    mean.add(
        {"w": np.array([4.0, 5.0], dtype=np.float32), "b": np.array(3.0, dtype=np.float32)},
        weight=2,
    )
    result = mean.result()
    np.testing.assert_allclose(result["w"], [3.0, 4.0])
    assert float(result["b"]) == pytest.approx(2.0)
    assert mean.count == 2


def test_mismatched_or_bad_updates_are_refused_without_changing_the_sum() -> None:
    mean = WeightedMean()
    mean.add({"w": np.ones(2, dtype=np.float32)}, weight=1)
    with pytest.raises(ValidationError, match="shape"):
        mean.add({"w": np.ones(3, dtype=np.float32)}, weight=1)
    with pytest.raises(ValidationError, match="differ"):
        mean.add({"v": np.ones(2, dtype=np.float32)}, weight=1)
    with pytest.raises(ValidationError, match="NaN"):
        mean.add({"w": np.array([1.0, np.nan], dtype=np.float32)}, weight=1)
    with pytest.raises(ValidationError, match="num_examples"):
        mean.add({"w": np.ones(2, dtype=np.float32)}, weight=0)
    np.testing.assert_allclose(mean.result()["w"], [1.0, 1.0])


def test_empty_aggregate_is_an_error() -> None:
    with pytest.raises(ValidationError, match="no update"):
        WeightedMean().result()
