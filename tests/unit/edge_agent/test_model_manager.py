"""A device switches to a release only once it verified and scored it; otherwise the old model
keeps serving and the status names the rejected version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.protocol import Status
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.releases import load_public_keys
from tests.unit.edge_agent.release_helpers import WIDTH, release_message, write_public_key

KEY = Ed25519PrivateKey.generate()


def samples(count: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).normal(size=(count, WIDTH)).astype(np.float32)


def manager(tmp_path: Path, *, train: bool = False, width: int = WIDTH) -> ModelManager:
    write_public_key(KEY, tmp_path / "keys")
    return ModelManager(
        ModelStore(tmp_path / "models"),
        load_public_keys(tmp_path / "keys"),
        model="har",
        runtime="onnx",
        train=train,
        held_back=lambda n: np.random.default_rng(1).normal(size=(n, width)).astype(np.float32),
    )


def test_a_good_release_installs_and_serves(tmp_path: Path) -> None:
    models = manager(tmp_path)
    payload, _, _ = release_message(tmp_path, 1, KEY)
    outcome = models.handle(payload)
    assert (outcome.action, outcome.version) == ("installed", 1)
    assert models.predictor is not None
    logits = models.predictor.predict(samples(5))
    assert logits.shape == (5, 3)
    assert np.all(np.isfinite(logits))
    assert models.rejected is None
    # a restarted agent finds the same model active
    assert manager(tmp_path).active is not None


def test_a_model_with_nan_outputs_fails_its_health_check_and_v1_stays(tmp_path: Path) -> None:
    models = manager(tmp_path)
    models.handle(release_message(tmp_path, 1, KEY)[0])
    outcome = models.handle(release_message(tmp_path, 2, KEY, poison=True)[0])
    assert outcome.action == "rejected"
    assert "non-finite outputs" in outcome.reason
    assert models.active is not None
    assert models.active.version == 1
    assert models.rejected is not None
    assert models.rejected.version == 2
    status = Status(fleet="farm", device_id="d", online=True, rejected_release=models.rejected)
    assert status.rejected_release is not None
    assert "health check" in status.rejected_release.reason


@pytest.mark.parametrize("case", ["wrong key", "tampered", "garbage", "other model"])
def test_bad_release_messages_change_nothing(tmp_path: Path, case: str) -> None:
    models = manager(tmp_path)
    models.handle(release_message(tmp_path, 1, KEY)[0])
    if case == "wrong key":
        payload = release_message(tmp_path, 2, Ed25519PrivateKey.generate())[0]
    elif case == "tampered":
        good = bytearray(release_message(tmp_path, 2, KEY)[0])
        good[-20] ^= 0xFF
        payload = bytes(good)
    elif case == "garbage":
        payload = b"\x00not a release at all"
    else:
        payload = release_message(tmp_path, 2, KEY, model="other")[0]
    outcome = models.handle(payload)
    assert outcome.action == ("ignored" if case == "other model" else "rejected")
    assert models.active is not None
    assert models.active.version == 1
    assert models.predictor is not None
    assert models.predictor.version == 1


def test_old_and_repeated_versions_are_ignored(tmp_path: Path) -> None:
    models = manager(tmp_path)
    models.handle(release_message(tmp_path, 2, KEY)[0])
    assert models.handle(release_message(tmp_path, 2, KEY)[0]).action == "ignored"
    assert models.handle(release_message(tmp_path, 1, KEY)[0]).action == "ignored"
    assert models.active is not None
    assert models.active.version == 2


def test_an_inference_only_device_never_fetches_the_weights(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere" / "weights.fltensors").as_uri()
    payload, _, _ = release_message(tmp_path, 1, KEY, urls={"weights.fltensors": missing})
    assert manager(tmp_path).handle(payload).action == "installed"
    trainer = manager(tmp_path / "trainer", train=True)
    outcome = trainer.handle(payload)
    assert outcome.action == "rejected"
    assert "download failed" in outcome.reason


def test_files_by_url_are_fetched_and_checked(tmp_path: Path) -> None:
    _, _, files = release_message(tmp_path, 1, KEY)
    served = tmp_path / "served"
    served.mkdir()
    for name, (_, data) in files.items():
        (served / name).write_bytes(data)
    urls = {name: (served / name).as_uri() for name in files}
    payload, _, _ = release_message(tmp_path, 1, KEY, urls=urls)
    models = manager(tmp_path, train=True)
    assert models.handle(payload).action == "installed"
    assert models.active is not None
    assert models.active.has("weights")
    (served / "model.onnx").write_bytes(b"swapped on the server")
    payload2, _, _ = release_message(
        tmp_path, 2, KEY, urls={n: (served / n).as_uri() for n in files}
    )
    outcome = models.handle(payload2)
    assert outcome.action == "rejected"
    assert models.active.version == 1


def test_a_model_that_does_not_fit_the_devices_samples_is_rejected(tmp_path: Path) -> None:
    models = manager(tmp_path, width=WIDTH + 1)
    outcome = models.handle(release_message(tmp_path, 1, KEY)[0])
    assert outcome.action == "rejected"
    assert f"takes {WIDTH} features" in outcome.reason
    assert models.active is None


def test_rollback_returns_to_the_previous_version(tmp_path: Path) -> None:
    models = manager(tmp_path)
    models.handle(release_message(tmp_path, 1, KEY)[0])
    models.handle(release_message(tmp_path, 2, KEY, seed=1)[0])
    assert models.active is not None
    assert models.active.version == 2
    outcome = models.rollback()
    assert (outcome.action, outcome.version) == ("rolled back", 1)
    assert models.predictor is not None
    assert models.predictor.version == 1
    assert models.rollback().action == "ignored"  # nothing before v1


def test_a_damaged_current_model_falls_back_at_start(tmp_path: Path) -> None:
    models = manager(tmp_path)
    models.handle(release_message(tmp_path, 1, KEY)[0])
    models.handle(release_message(tmp_path, 2, KEY, seed=1)[0])
    assert models.active is not None
    models.active.file("onnx").write_bytes(b"bit rot")
    restarted = manager(tmp_path)
    assert restarted.active is not None
    assert restarted.active.version == 1
    assert restarted.rejected is not None
    assert restarted.rejected.version == 2
