"""Median, trimmed mean and Krum: hand-computed values, buffering semantics and errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_trainer.strategies import (
    KrumAccumulator,
    MedianAccumulator,
    StrategyError,
    TrimmedMeanAccumulator,
    coordinate_median,
    krum,
    krum_scores,
    trimmed_mean,
)


def f32(*values: Any) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def w(*values: Any) -> dict[str, npt.NDArray[np.float32]]:
    return {"w": f32(*values)}


# -- median ------------------------------------------------------------------------------------


def test_median_of_an_odd_count_by_hand() -> None:
    updates = [w(1, 2, 3), w(4, 0, 30), w(2, 5, -1)]
    # per coordinate: sorted(1, 4, 2) → 2;  sorted(2, 0, 5) → 2;  sorted(3, 30, −1) → 3
    result = coordinate_median(updates)
    np.testing.assert_array_equal(result["w"], [2, 2, 3])
    np.testing.assert_array_equal(result["w"], np.median([u["w"] for u in updates], axis=0))


def test_median_of_an_even_count_averages_the_middle_pair() -> None:
    updates = [w(1, 2), w(3, 4), w(5, 0), w(7, 8)]
    # coordinate 0: 1 3 5 7 → (3 + 5)/2 = 4;  coordinate 1: 0 2 4 8 → (2 + 4)/2 = 3
    np.testing.assert_array_equal(coordinate_median(updates)["w"], [4, 3])


def test_median_of_two_huge_values_does_not_overflow() -> None:
    # (3e38 + 3e38)/2 in float32 would be inf; the middle pair is averaged in float64.
    np.testing.assert_array_equal(coordinate_median([w(3e38), w(3e38)])["w"], f32(3e38))


def test_median_keeps_tensor_shapes_and_order() -> None:
    updates = [{"b": np.array([[i]], np.float32), "a": f32(i, -i)} for i in (1, 5, 2)]
    result = coordinate_median(updates)
    assert list(result) == ["b", "a"]
    np.testing.assert_array_equal(result["b"], [[2]])
    np.testing.assert_array_equal(result["a"], [2, -2])


# -- trimmed mean ------------------------------------------------------------------------------


def test_trimmed_mean_by_hand() -> None:
    updates = [w(1, 5), w(100, 0), w(3, -50), w(2, 2), w(4, 1)]
    # n = 5, β = 0.2: cut ⌊0.2·5⌋ = 1 from each end
    # coordinate 0: 1 2 3 4 100 → mean(2, 3, 4) = 3;  coordinate 1: −50 0 1 2 5 → mean(0, 1, 2) = 1
    np.testing.assert_array_equal(trimmed_mean(updates, 0.2)["w"], [3, 1])


def test_trimmed_mean_cut_rounds_down() -> None:
    updates = [w(1), w(2), w(3), w(10)]
    # β = 0.1, n = 4: ⌊0.4⌋ = 0 → plain mean 16/4 = 4;  β = 0.49: ⌊1.96⌋ = 1 → mean(2, 3) = 2.5
    np.testing.assert_array_equal(trimmed_mean(updates, 0.1)["w"], [4])
    np.testing.assert_array_equal(trimmed_mean(updates, 0.49)["w"], [2.5])


def test_trimmed_mean_of_one_update_is_that_update() -> None:
    np.testing.assert_array_equal(trimmed_mean([w(0.1, 7)], 0.4)["w"], f32(0.1, 7))


# -- Krum --------------------------------------------------------------------------------------

# Five one-number updates: 0, 1, 2, 3, 100, f = 1, so each scores its n−f−2 = 2 nearest:
#   0: 1² + 2² = 5     1: 1² + 1² = 2     2: 1² + 1² = 2     3: 1² + 2² = 5
#   100: 97² + 98² = 9409 + 9604 = 19013
LINE = [w(0), w(1), w(2), w(3), w(100)]


def test_krum_scores_by_hand() -> None:
    np.testing.assert_array_equal(krum_scores(LINE, byzantine=1), [5, 2, 2, 5, 19013])


def test_krum_picks_the_best_score_and_ties_go_to_the_earlier_update() -> None:
    np.testing.assert_array_equal(krum(LINE, byzantine=1)["w"], [1])  # 1 and 2 tie at 2
    np.testing.assert_array_equal(krum(LINE[::-1], byzantine=1)["w"], [2])  # now 2 comes first


def test_multi_krum_averages_the_m_best() -> None:
    # m = 3: scores 2 (update 1), 2 (update 2), then 5 (update 0 before 3) → (1 + 2 + 0)/3 = 1
    np.testing.assert_array_equal(krum(LINE, byzantine=1, select=3)["w"], [1])
    # m = 4 = n − f: adds update 3 → (1 + 2 + 0 + 3)/4 = 1.5
    np.testing.assert_array_equal(krum(LINE, byzantine=1, select=4)["w"], [1.5])


def test_krum_distances_span_all_tensors() -> None:
    updates = [{"a": f32(0), "b": f32(0, 0)} for _ in range(2)]
    updates += [{"a": f32(1), "b": f32(0, 0)}, {"a": f32(0), "b": f32(3, 4)}]
    updates += [{"a": f32(10), "b": f32(0, 0)}]
    # f = 1, 2 nearest; distance² sums over a and b: update 3 is 0² + 3² + 4² = 25 from update 0
    #   0: 0 (to 1) + 1 (to 2) = 1      1: 0 + 1 = 1      2: 1 + 1 = 2
    #   3: 25 + 25 = 50 (to 0 and 1)     4: 81 (to 2) + 100 = 181
    np.testing.assert_array_equal(krum_scores(updates, 1), [1, 1, 2, 50, 181])


def test_krum_f_zero_needs_three_updates() -> None:
    # f = 0: n ≥ 3, one nearest neighbour each: 0 → 1, 1 → 1, 5 → 16
    np.testing.assert_array_equal(krum_scores([w(0), w(1), w(5)], 0), [1, 1, 16])


@pytest.mark.parametrize(
    ("n", "f", "select", "message"),
    [
        (4, 1, 1, r"Krum needs n >= 2f\+3 updates: got n=4 with f=1"),
        (6, 2, 1, r"got n=6 with f=2"),
        (5, 1, 5, r"multi-Krum select m=5 exceeds n-f=4 \(n=5, f=1\)"),
        (0, 0, 1, r"no update was added: Krum has nothing to combine"),
    ],
)
def test_krum_with_too_few_updates(n: int, f: int, select: int, message: str) -> None:
    accumulator = KrumAccumulator(byzantine=f, select=select)
    for i in range(n):
        accumulator.add(w(i), 1)
    with pytest.raises(StrategyError, match=message):
        accumulator.result()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KrumAccumulator(byzantine=-1), r"krum byzantine \(f\) must be an integer >= 0"),
        (lambda: KrumAccumulator(byzantine=1, select=0), r"krum select \(m\) must be an integer"),
        (lambda: KrumAccumulator(byzantine=1.5), r"got 1\.5"),  # type: ignore[arg-type]
        (lambda: TrimmedMeanAccumulator(0.5), r"trim_fraction must be in \[0, 0\.5\), got 0\.5"),
        (lambda: TrimmedMeanAccumulator(-0.1), r"got -0\.1"),
    ],
)
def test_bad_settings(build: Any, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build()


# -- buffering, weights and errors shared by all three -----------------------------------------

ACCUMULATORS = {
    "median": MedianAccumulator,
    "trimmed_mean": lambda: TrimmedMeanAccumulator(0.2),
    "krum": lambda: KrumAccumulator(byzantine=1),
}


@pytest.mark.parametrize("make", ACCUMULATORS.values(), ids=ACCUMULATORS.keys())
def test_weights_are_checked_but_do_not_count(make: Any) -> None:
    light, heavy = make(), make()
    for i, value in enumerate([0.0, 1.0, 2.0, 3.0, 50.0]):
        light.add(w(value), 1)
        heavy.add(w(value), 1e6 if i == 4 else 1)  # a hostile sender claiming many examples
    np.testing.assert_array_equal(light.result()["w"], heavy.result()["w"])
    assert (heavy.count, heavy.total_weight) == (5, 1e6 + 4)
    with pytest.raises(StrategyError, match=r"weight must be > 0 and finite, got -1\.0"):
        heavy.add(w(1.0), -1)


@pytest.mark.parametrize("make", ACCUMULATORS.values(), ids=ACCUMULATORS.keys())
def test_updates_are_copied_so_callers_may_reuse_buffers(make: Any) -> None:
    accumulator, buffer = make(), f32(0.0)
    for value in [1.0, 2.0, 3.0, 4.0, 5.0]:
        buffer[0] = value
        accumulator.add({"w": buffer}, 1)
    buffer[0] = 1000.0
    assert 1.0 <= float(accumulator.result()["w"][0]) <= 5.0


@pytest.mark.parametrize("make", ACCUMULATORS.values(), ids=ACCUMULATORS.keys())
@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"w": f32(1, 2)}, r"tensors\['w'\]: shape \[2\] differs from \[1\]"),
        ({"v": f32(1)}, r"missing \['w'\], unexpected \['v'\]"),
        ({"w": f32(np.nan)}, r"tensors\['w'\]: holds NaN or infinity"),
    ],
)
def test_rejected_update_names_the_problem_and_is_not_kept(
    make: Any, delta: dict[str, Any], message: str
) -> None:
    accumulator = make()
    accumulator.add(w(1), 1)
    with pytest.raises(StrategyError, match=message):
        accumulator.add(delta, 1)
    assert accumulator.count == 1


@pytest.mark.parametrize("make", ACCUMULATORS.values(), ids=ACCUMULATORS.keys())
def test_nothing_added(make: Any) -> None:
    with pytest.raises(StrategyError, match="no update was added"):
        make().result()


@pytest.mark.parametrize("make", ACCUMULATORS.values(), ids=ACCUMULATORS.keys())
def test_results_are_float32_and_owned_by_the_caller(make: Any) -> None:
    accumulator = make()
    for value in [1.0, 2.0, 3.0, 4.0, 5.0]:
        accumulator.add({"w": np.array([value], np.float64)}, 1)
    first = accumulator.result()
    assert first["w"].dtype == np.float32
    first["w"][0] = -1.0
    assert float(accumulator.result()["w"][0]) != -1.0
