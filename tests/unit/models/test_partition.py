"""Partitioners on real data (watch subjects, MNIST labels) and as pure functions of labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import ConfigError, ValidationError
from models.datasets import (
    Dataset,
    label_entropy,
    load,
    partition_dirichlet,
    partition_iid,
    partition_natural,
)


def tagged(ds: Dataset) -> Dataset:
    """The same labels and groups with x = row number, so a partition shows which rows it took."""
    return replace(ds, x=np.arange(len(ds), dtype=np.float32)[:, None])


def rows_of(parts: list[Dataset]) -> list[np.ndarray]:
    return [p.x[:, 0].astype(np.int64) for p in parts]


def assert_disjoint_cover(parts: list[Dataset], n: int) -> None:
    rows = np.concatenate(rows_of(parts))
    assert np.array_equal(np.sort(rows), np.arange(n))


def same(a: list[Dataset], b: list[Dataset]) -> bool:
    if len(a) != len(b):
        return False
    return all(np.array_equal(x, y) for x, y in zip(rows_of(a), rows_of(b), strict=True))


def test_iid_covers_every_row_once_in_even_shares() -> None:
    ds = tagged(load("mnist"))
    parts = partition_iid(ds, 7, seed=0)
    assert_disjoint_cover(parts, len(ds))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert same(parts, partition_iid(ds, 7, seed=0))
    assert not same(parts, partition_iid(ds, 7, seed=1))
    # every device sees every digit
    assert all(len(np.unique(p.y)) == 10 for p in parts)


def test_iid_keeps_the_real_rows() -> None:
    ds = load("digits")
    parts = partition_iid(ds, 3, seed=5)
    order = np.random.default_rng(5).permutation(len(ds))
    first = np.sort(np.array_split(order, 3)[0])
    assert np.array_equal(parts[0].x, ds.x[first])
    assert np.array_equal(parts[0].y, ds.y[first])


def test_natural_gives_one_device_per_watch_subject() -> None:
    ds = tagged(load("watch"))
    parts = partition_natural(ds)
    assert len(parts) == 10
    assert_disjoint_cover(parts, len(ds))
    for subject, part in enumerate(parts, start=1):
        assert part.groups is not None
        assert set(part.groups.tolist()) == {subject}
        assert len(np.unique(part.y)) == 7  # every subject did every exercise


def test_natural_needs_groups() -> None:
    with pytest.raises(ValidationError, match="no groups"):
        partition_natural(load("digits"))


def test_dirichlet_is_seeded_and_covers_every_row() -> None:
    ds = tagged(load("watch"))
    parts = partition_dirichlet(ds, 10, alpha=0.5, seed=2, min_size=20)
    assert_disjoint_cover(parts, len(ds))
    assert min(len(p) for p in parts) >= 20
    assert same(parts, partition_dirichlet(ds, 10, alpha=0.5, seed=2, min_size=20))
    assert not same(parts, partition_dirichlet(ds, 10, alpha=0.5, seed=3, min_size=20))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    ds = load("mnist")

    def mean_entropy(alpha: float) -> float:
        scores = [
            np.mean([label_entropy(p) for p in partition_dirichlet(ds, 10, alpha=alpha, seed=s)])
            for s in range(3)
        ]
        return float(np.mean(scores))

    skewed, even = mean_entropy(0.1), mean_entropy(100.0)
    assert even > 0.95 * np.log(10)  # nearly uniform over ten digits
    assert skewed < 0.5 * even


def test_label_entropy() -> None:
    one = Dataset("t", np.zeros((4, 1), np.float32), np.zeros(4, np.int64), ("a", "b"))
    two = replace(one, y=np.array([0, 1, 0, 1]))
    assert label_entropy(one) == 0.0
    assert label_entropy(two) == pytest.approx(np.log(2))


def test_bad_partition_options_are_config_errors() -> None:
    ds = load("breast_cancer")
    with pytest.raises(ConfigError, match="devices"):
        partition_iid(ds, 0, seed=0)
    with pytest.raises(ConfigError, match="570 devices"):
        partition_iid(ds, 570, seed=0)
    with pytest.raises(ConfigError, match="alpha"):
        partition_dirichlet(ds, 3, alpha=0.0, seed=0)
    with pytest.raises(ConfigError, match="min_size"):
        partition_dirichlet(ds, 3, alpha=1.0, seed=0, min_size=-1)
    with pytest.raises(ConfigError, match="no Dirichlet draw"):
        partition_dirichlet(ds, 5, alpha=1.0, seed=0, min_size=113)


@st.composite
def labelled(draw: st.DrawFn) -> Dataset:
    classes = draw(st.integers(1, 6))
    y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=200)))
    groups = np.array(draw(st.lists(st.integers(0, 4), min_size=len(y), max_size=len(y))))
    names = tuple(str(c) for c in range(classes))
    x = np.arange(len(y), dtype=np.float32)[:, None]
    return Dataset("synthetic", x, y.astype(np.int64), names, groups.astype(np.int64))


@settings(max_examples=60, deadline=None)
@given(
    ds=labelled(),
    devices=st.integers(1, 12),
    alpha=st.floats(0.01, 1000.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_partitions_are_disjoint_covers(ds: Dataset, devices: int, alpha: float, seed: int) -> None:
    devices = min(devices, len(ds))
    iid = partition_iid(ds, devices, seed=seed)
    skewed = partition_dirichlet(ds, devices, alpha=alpha, seed=seed, min_size=0)
    for parts in (iid, skewed, partition_natural(ds)):
        assert_disjoint_cover(parts, len(ds))
        for part in parts:
            assert np.array_equal(part.y, ds.y[rows_of([part])[0]])
    assert len(iid) == len(skewed) == devices
    assert same(skewed, partition_dirichlet(ds, devices, alpha=alpha, seed=seed, min_size=0))
