"""Properties every aggregation rule must keep: copies, order, determinism, hostile minorities."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cloud_trainer.strategies import Arrays, StrategyConfig, build_strategy, krum_scores

Update = dict[str, npt.NDArray[np.float32]]

VALUES = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
WEIGHTS = st.floats(0.01, 1e4)
SHAPES = st.lists(
    hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4), min_size=1, max_size=3
)

CONFIGS = {
    "fedavg": StrategyConfig(name="fedavg"),
    "median": StrategyConfig(name="median"),
    "trimmed_mean": StrategyConfig(name="trimmed_mean", trim_fraction=0.2),
    "krum": StrategyConfig(name="krum", krum_byzantine=1),
    "multi_krum": StrategyConfig(name="krum", krum_byzantine=1, krum_select=3),
}
ROBUST = [name for name in CONFIGS if name != "fedavg"]
MIN_UPDATES = 5  # Krum with f = 1 needs n >= 2f+3

SETTINGS = settings(deadline=None, max_examples=60)


@st.composite
def updates_of(draw: st.DrawFn, shapes: list[tuple[int, ...]], count: int) -> list[Update]:
    return [
        {
            f"t{i}": draw(hnp.arrays(np.float32, shape, elements=VALUES))
            for i, shape in enumerate(shapes)
        }
        for _ in range(count)
    ]


def aggregate(name: str, updates: list[Update], weights: list[float]) -> Arrays:
    return build_strategy(CONFIGS[name]).aggregate(zip(updates, weights, strict=True))


def assert_close_to_float32_rounding(actual: Arrays, expected: Arrays, scale: float) -> None:
    """rtol 1e-6, plus an absolute slack of 1e-6 × the inputs' magnitude: a weighted sum of
    mixed signs can cancel, and then the rounding of its terms dominates a small result."""
    assert actual.keys() == expected.keys()
    for name in expected:
        assert isinstance(actual[name], np.ndarray)
        assert actual[name].dtype == np.float32
        np.testing.assert_allclose(
            actual[name], expected[name], rtol=1e-6, atol=1e-6 * scale + 1e-30
        )


def assert_identical(actual: Arrays, expected: Arrays) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert isinstance(actual[name], np.ndarray)
        assert actual[name].dtype == np.float32
        assert actual[name].shape == expected[name].shape
        np.testing.assert_array_equal(actual[name], expected[name])


@pytest.mark.parametrize("name", CONFIGS)
@SETTINGS
@given(data=st.data(), shapes=SHAPES, count=st.integers(MIN_UPDATES, 9))
def test_copies_of_one_update_give_it_back(
    name: str, data: st.DataObject, shapes: list[tuple[int, ...]], count: int
) -> None:
    (update,) = data.draw(updates_of(shapes, 1))
    weights = data.draw(st.lists(WEIGHTS, min_size=count, max_size=count))
    result = aggregate(name, [update] * count, weights)
    if name == "fedavg":
        assert_close_to_float32_rounding(result, update, scale=0.0)
    else:
        assert_identical(result, update)


@pytest.mark.parametrize("name", ["fedavg", "median", "trimmed_mean"])
@SETTINGS
@given(data=st.data(), shapes=SHAPES, count=st.integers(1, 9))
def test_order_does_not_matter(
    name: str, data: st.DataObject, shapes: list[tuple[int, ...]], count: int
) -> None:
    updates = data.draw(updates_of(shapes, count))
    weights = data.draw(st.lists(WEIGHTS, min_size=count, max_size=count))
    order = data.draw(st.permutations(range(count)))
    result = aggregate(name, updates, weights)
    shuffled = aggregate(name, [updates[i] for i in order], [weights[i] for i in order])
    if name == "fedavg":
        scale = max(float(np.abs(a).max()) for u in updates for a in u.values())
        assert_close_to_float32_rounding(shuffled, result, scale)
    else:
        assert_identical(shuffled, result)


@pytest.mark.parametrize("name", ["krum", "multi_krum"])
@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shapes=SHAPES,
    count=st.integers(MIN_UPDATES, 9),
    order=st.randoms(use_true_random=False),
)
def test_krum_order_does_not_matter_without_ties(
    name: str, seed: int, shapes: list[tuple[int, ...]], count: int, order: Any
) -> None:
    # Equal scores are ranked by arrival order (documented), so exact order independence holds
    # for distinct scores; random normal updates make ties vanishingly rare.
    rng = np.random.default_rng(seed)
    updates = [
        {f"t{i}": rng.standard_normal(shape).astype(np.float32) for i, shape in enumerate(shapes)}
        for _ in range(count)
    ]
    assume(len(set(krum_scores(updates, byzantine=1).tolist())) == count)
    permutation = list(range(count))
    order.shuffle(permutation)
    result = aggregate(name, updates, [1.0] * count)
    assert_identical(aggregate(name, [updates[i] for i in permutation], [1.0] * count), result)


@pytest.mark.parametrize("name", CONFIGS)
@SETTINGS
@given(data=st.data(), shapes=SHAPES, count=st.integers(MIN_UPDATES, 9))
def test_same_updates_same_order_give_identical_bits(
    name: str, data: st.DataObject, shapes: list[tuple[int, ...]], count: int
) -> None:
    updates = data.draw(updates_of(shapes, count))
    weights = data.draw(st.lists(WEIGHTS, min_size=count, max_size=count))
    first, second = aggregate(name, updates, weights), aggregate(name, updates, weights)
    assert all(first[k].tobytes() == second[k].tobytes() for k in first)


# -- hostile minorities --------------------------------------------------------------------------

HONEST_VALUES = st.floats(-10, 10, width=32, allow_subnormal=False)
HOSTILE_VALUES = st.sampled_from([1e30, -1e30, -1e6, 1e6])


@st.composite
def attacked_round(
    draw: st.DrawFn, honest: int, hostile: int
) -> tuple[list[Update], list[Update], list[float]]:
    """(honest updates, all updates with the hostile ones mixed in, weights)."""
    shapes = draw(SHAPES)
    good = [
        {
            f"t{i}": draw(hnp.arrays(np.float32, shape, elements=HONEST_VALUES))
            for i, shape in enumerate(shapes)
        }
        for _ in range(honest)
    ]
    bad = [
        {
            f"t{i}": np.full(shape, draw(HOSTILE_VALUES), np.float32)
            for i, shape in enumerate(shapes)
        }
        for _ in range(hostile)
    ]
    everyone = draw(st.permutations(good + bad))
    # Hostile senders also claim huge weights, which the robust rules must ignore.
    weights = [1e6 if any(u is b for b in bad) else 1.0 for u in everyone]
    return good, list(everyone), weights


def assert_within_honest_range(result: Arrays, honest: list[Update]) -> None:
    for name, value in result.items():
        stack = np.stack([u[name] for u in honest])
        assert np.all(value >= stack.min(axis=0)), name
        assert np.all(value <= stack.max(axis=0)), name


@SETTINGS
@given(data=st.data(), honest=st.integers(1, 8), hostile=st.integers(0, 7))
def test_median_stays_within_the_honest_range(
    data: st.DataObject, honest: int, hostile: int
) -> None:
    assume(hostile < honest)
    good, everyone, weights = data.draw(attacked_round(honest, hostile))
    assert_within_honest_range(aggregate("median", everyone, weights), good)


@SETTINGS
@given(data=st.data(), honest=st.integers(1, 12), hostile=st.integers(0, 4))
def test_trimmed_mean_stays_within_the_honest_range(
    data: st.DataObject, honest: int, hostile: int
) -> None:
    assume(hostile <= math.floor(0.2 * (honest + hostile)))  # no more than the trim count
    good, everyone, weights = data.draw(attacked_round(honest, hostile))
    assert_within_honest_range(aggregate("trimmed_mean", everyone, weights), good)


@SETTINGS
@given(data=st.data(), f=st.integers(0, 2), extra=st.integers(0, 3), select=st.integers(1, 4))
def test_krum_picks_honest_updates(data: st.DataObject, f: int, extra: int, select: int) -> None:
    hostile = data.draw(st.integers(0, f))
    honest = 2 * f + 3 + extra - hostile  # n = 2f+3+extra
    assume(select <= honest + hostile - f)
    good, everyone, weights = data.draw(attacked_round(honest, hostile))
    config = StrategyConfig(name="krum", krum_byzantine=f, krum_select=select)
    result = build_strategy(config).aggregate(zip(everyone, weights, strict=True))
    if select == 1:
        assert any(all(np.array_equal(result[k], u[k]) for k in u) for u in good)
    assert_within_honest_range(result, good)
