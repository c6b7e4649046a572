"""FedBuff's polynomial staleness weight (1 + s)^(−exponent)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from cloud_trainer.strategies import StrategyError, staleness_weight


@pytest.mark.parametrize(
    ("staleness", "exponent", "expected"),
    [
        (0, 0.5, 1.0),  # a fresh update counts fully
        (3, 0.5, 0.5),  # (1 + 3)^−0.5 = 1/√4
        (1, 0.5, 1 / math.sqrt(2)),  # ≈ 0.7071
        (9, 1.0, 0.1),  # (1 + 9)^−1
        (7, 0.0, 1.0),  # exponent 0 turns weighting off
    ],
)
def test_values_by_hand(staleness: int, exponent: float, expected: float) -> None:
    assert staleness_weight(staleness, exponent) == pytest.approx(expected, rel=1e-12)


def test_default_exponent_is_a_half() -> None:
    assert staleness_weight(8) == pytest.approx(1 / 3)  # (1 + 8)^−0.5


def test_decreases_with_staleness() -> None:
    weights = [staleness_weight(s) for s in range(50)]
    assert all(a > b > 0 for a, b in itertools.pairwise(weights))


@pytest.mark.parametrize(
    ("staleness", "exponent", "message"),
    [
        (-1, 0.5, r"staleness must be an integer >= 0, got -1"),
        (1.5, 0.5, r"got 1\.5"),
        (True, 0.5, r"got True"),
        (1, -0.5, r"staleness exponent must be finite and >= 0, got -0\.5"),
        (1, math.nan, r"got nan"),
    ],
)
def test_bad_arguments(staleness: Any, exponent: float, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        staleness_weight(staleness, exponent)
