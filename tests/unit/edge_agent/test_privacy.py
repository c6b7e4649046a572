"""Clipping and noise of an update, and the zCDP accountant's arithmetic and persistence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bus.errors import ConfigError, ValidationError
from bus.protocol import Privacy
from edge_agent.privacy import (
    PrivacyAccountant,
    clip_and_noise,
    epsilon,
    global_norm,
    rho_per_release,
)

RNG = np.random.default_rng(0)


def update() -> dict[str, np.ndarray]:
    # float norm: sqrt(3² + 4² + 12²) = 13; the counter is not part of it
    return {
        "w": np.array([[3.0, 4.0]], dtype=np.float32),
        "b": np.array([12.0], dtype=np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


def test_global_norm_covers_float_tensors_only() -> None:
    assert global_norm(update()) == pytest.approx(13.0)
    assert global_norm({}) == 0.0


def test_clip_above_scales_to_exactly_clip_norm() -> None:
    clipped, norm = clip_and_noise(update(), clip_norm=1.0, noise_multiplier=None, rng=RNG)
    assert norm == pytest.approx(13.0)
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(clipped["w"], [[3 / 13, 4 / 13]], rtol=1e-6)  # direction kept
    assert clipped["w"].dtype == np.float32


def test_clip_below_leaves_the_update_unchanged() -> None:
    original = update()
    clipped, norm = clip_and_noise(original, clip_norm=20.0, noise_multiplier=0.0, rng=RNG)
    assert norm == pytest.approx(13.0)
    for name, value in original.items():
        np.testing.assert_array_equal(clipped[name], value)
        assert clipped[name] is not value  # a new mapping of new arrays


def test_non_float_tensors_pass_through_untouched() -> None:
    clipped, _ = clip_and_noise(update(), clip_norm=0.1, noise_multiplier=3.0, rng=RNG)
    counter = clipped["bn.num_batches_tracked"]
    assert counter.dtype == np.int64
    assert int(counter) == 7


def test_noise_std_is_noise_multiplier_times_clip_norm() -> None:
    delta = {"w": np.zeros(200_000, dtype=np.float32)}
    noised, norm = clip_and_noise(delta, clip_norm=2.0, noise_multiplier=0.5, rng=RNG)
    assert norm == 0.0
    assert float(np.std(noised["w"])) == pytest.approx(1.0, rel=0.05)  # σ = 0.5 · 2.0
    assert abs(float(np.mean(noised["w"]))) < 0.01


def test_non_finite_update_is_rejected() -> None:
    delta = {"w": np.array([1.0, np.nan], dtype=np.float32)}
    with pytest.raises(ValidationError, match="NaN"):
        clip_and_noise(delta, clip_norm=1.0, noise_multiplier=None, rng=RNG)


@pytest.mark.parametrize(("clip", "noise"), [(0.0, None), (math.inf, None), (1.0, -1.0)])
def test_bad_settings_are_config_errors(clip: float, noise: float | None) -> None:
    with pytest.raises(ConfigError):
        clip_and_noise(update(), clip_norm=clip, noise_multiplier=noise, rng=RNG)


def test_epsilon_matches_hand_computed_value() -> None:
    # z = 1 → ρ = 1/2; ε = 0.5 + 2·sqrt(0.5 · ln(1e5)) = 0.5 + 2·sqrt(5.7564627…)
    assert rho_per_release(1.0) == 0.5
    assert rho_per_release(2.0) == 0.125
    assert epsilon(0.5, 1e-5) == pytest.approx(5.298525912188081, rel=1e-12)
    assert epsilon(0.0, 1e-5) == 0.0


def test_spend_returns_cumulative_privacy(tmp_path: Path) -> None:
    accountant = PrivacyAccountant(tmp_path / "privacy.json", delta=1e-5)
    assert accountant.privacy() == Privacy(epsilon=0.0, delta=1e-5)  # nothing spent yet
    first = accountant.spend(1.0)
    assert first is not None
    assert first.epsilon == pytest.approx(5.298525912188081)
    assert first.delta == 1e-5
    assert accountant.releases == 1


def test_two_spends_equal_one_spend_with_rho_doubled(tmp_path: Path) -> None:
    twice = PrivacyAccountant(tmp_path / "a.json", delta=1e-6)
    twice.spend(1.3)
    composed = twice.spend(1.3)
    once = PrivacyAccountant(tmp_path / "b.json", delta=1e-6)
    doubled = once.spend(1.3 / math.sqrt(2))  # ρ = 1/(2z²) doubles when z² halves
    assert composed is not None
    assert doubled is not None
    assert composed.epsilon == pytest.approx(doubled.epsilon, rel=1e-12)
    assert twice.rho == pytest.approx(2 * rho_per_release(1.3))


def test_budget_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state" / "privacy.json"
    PrivacyAccountant(path, delta=1e-5).spend(1.0)
    again = PrivacyAccountant(path, delta=1e-5)
    assert again.releases == 1
    assert again.rho == pytest.approx(0.5)
    after = again.spend(1.0)
    assert after is not None
    assert after.epsilon == pytest.approx(epsilon(1.0, 1e-5))
    assert [p.name for p in path.parent.iterdir()] == ["privacy.json"]  # no temporary left


def test_release_without_noise_voids_the_guarantee_for_good(tmp_path: Path) -> None:
    path = tmp_path / "privacy.json"
    accountant = PrivacyAccountant(path, delta=1e-5)
    assert accountant.spend(1.0) is not None
    assert accountant.spend(None) is None
    assert accountant.spend(5.0) is None
    assert accountant.rho == math.inf
    reloaded = PrivacyAccountant(path, delta=1e-5)
    assert reloaded.privacy() is None
    assert reloaded.releases == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"schema": 1, "rho": -1.0, "releases": 1, "unbounded": false}',
        '{"schema": 1, "releases": 1, "unbounded": false}',
        '{"schema": 2, "rho": 0.5, "releases": 1, "unbounded": false}',
        "[1, 2]",
    ],
)
def test_corrupt_file_is_an_error_not_a_reset(tmp_path: Path, content: str) -> None:
    path = tmp_path / "privacy.json"
    path.write_text(content)
    with pytest.raises(ValidationError, match="privacy budget file") as caught:
        PrivacyAccountant(path, delta=1e-5)
    assert str(path) in str(caught.value)
    assert path.read_text() == content


def test_file_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "privacy.json"
    PrivacyAccountant(path, delta=1e-5).spend(2.0)
    assert json.loads(path.read_text()) == {
        "schema": 1,
        "rho": 0.125,
        "releases": 1,
        "unbounded": False,
    }


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1])
def test_delta_must_be_in_open_unit_interval(tmp_path: Path, delta: float) -> None:
    with pytest.raises(ConfigError):
        PrivacyAccountant(tmp_path / "privacy.json", delta=delta)
