"""The release pipeline end to end on a real model and data set, checked with the device's code.

A logistic regression trained briefly on breast_cancer is released into a file:// store; the
message a tiny in-test producer captured is decoded and verified exactly as a device does
(`edge_agent.releases`), and installed by the device's model manager.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.errors import ConfigError, LogError, PublishError, ValidationError
from bus.ids import new_message_id
from bus.log.base import DeliveryReport, OnDelivery
from bus.protocol import ReleaseManifest, decode_message, signing_bytes
from bus.store import ObjectStore, open_store
from bus.topics import KAFKA_RELEASES
from cloud_trainer.release import (
    Lineage,
    Registry,
    ReleaseConfig,
    ReleasePipeline,
    evaluate,
    generate_keypair,
    load_private_key,
    tflite_available,
)
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.releases import fetch, load_public_keys, verify_release
from models.params import Params, get_parameters
from models.parity import TOLERANCES, ParityError, Tolerance
from models.train import fit
from models.workflow import Split, build_seeded, default_config, load_weights, prepare_data

DATASET = "breast_cancer"
SEED = 3
KEY_ID = "fleet-test"
ROUND = "round-7"


@dataclass
class RecordingProducer:
    """Records (topic, key, value); reports delivery (or `error`) from `flush`, as Kafka does."""

    error: LogError | None = None
    sent: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    _pending: list[tuple[str, OnDelivery | None]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        self.sent.append((topic, key, value))
        self._pending.append((topic, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 30.0) -> int:
        for offset, (topic, callback) in enumerate(self._pending):
            if callback is not None:
                landed = None if self.error else offset
                callback(DeliveryReport(topic, 0, landed, self.error))
        self._pending.clear()
        return 0

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Trained:
    split: Split
    config: dict[str, Any]
    params: Params


@pytest.fixture(scope="module")
def trained() -> Trained:
    split = prepare_data(DATASET, seed=SEED)
    config = default_config("logreg", split.train)
    module = build_seeded("logreg", config, SEED)
    fit(module, split.train.x, split.train.y, epochs=3, batch_size=64, lr=1e-2, seed=SEED)
    return Trained(split, config, get_parameters(module))


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory, KEY_ID)
    return directory


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path}/store")


def pipeline(
    trained: Trained,
    key_dir: Path,
    store: ObjectStore,
    producer: RecordingProducer | None,
    **options: Any,
) -> ReleasePipeline:
    config = ReleaseConfig(
        fleet="farm",
        model="bc",
        architecture="logreg",
        architecture_config=trained.config,
        dataset=DATASET,
        split_seed=SEED,
        **({"tflite": False} | options),
    )
    key = load_private_key(key_dir / f"{KEY_ID}.key")
    return ReleasePipeline(config, store=store, producer=producer, key=key, key_id=KEY_ID)


def lineage(devices: int = 3) -> Lineage:
    return Lineage(
        round_id=ROUND,
        update_ids=tuple(new_message_id() for _ in range(devices)),
        device_ids=tuple(f"dev-{i}" for i in range(devices)),
        strategy="fedavg",
    )


def release(target: ReleasePipeline, params: Params, version: int = 1) -> Any:
    return target.release(
        params,
        version=version,
        round_id=ROUND,
        parent_version=version - 1,
        lineage=lineage(),
        extra_metrics={"train_loss": 0.5},
    )


def device_files(value: bytes) -> tuple[ReleaseManifest, dict[str, bytes]]:
    """What a device ends up holding: inline files from the payload, the others downloaded."""
    message = decode_message(value)
    manifest = message.envelope
    assert isinstance(manifest, ReleaseManifest)
    files = {name: bytes(array.data) for name, array in message.tensors.items()}
    files |= {spec.name: fetch(spec) for spec in manifest.files if spec.url is not None}
    return manifest, files


def module_of(trained: Trained) -> torch.nn.Module:
    module = build_seeded("logreg", trained.config, 0)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in trained.params.items()})
    return module


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp directory, watched: the pipeline must leave nothing there."""
    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_inline_release_verifies_and_installs_on_a_device(
    trained: Trained, key_dir: Path, store: ObjectStore, tmp_path: Path, scratch: Path
) -> None:
    producer = RecordingProducer()
    entry = release(pipeline(trained, key_dir, store, producer), trained.params)
    assert list(scratch.iterdir()) == []

    assert [(topic, key) for topic, key, _ in producer.sent] == [(KAFKA_RELEASES, b"bc")]
    value = producer.sent[0][2]
    manifest, files = device_files(value)
    assert all(spec.url is None for spec in manifest.files)  # small files ride inline
    assert sorted(files) == ["model.onnx", "weights.fltensors"]
    verify_release(manifest, files, load_public_keys(key_dir))
    assert (manifest.fleet, manifest.model, manifest.version, manifest.round_id) == (
        "farm",
        "bc",
        1,
        ROUND,
    )
    assert manifest.id == entry.manifest.id  # the registry holds what was published
    assert signing_bytes(manifest) == signing_bytes(entry.manifest)

    device = ModelManager(
        ModelStore(tmp_path / "device"), load_public_keys(key_dir), model="bc", runtime="onnx"
    )
    outcome = device.handle(value)
    assert (outcome.action, outcome.version) == ("installed", 1), outcome.reason


def test_metrics_are_the_held_out_evaluation(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    entry = release(pipeline(trained, key_dir, store, None), trained.params)
    expected = evaluate(module_of(trained), trained.split.test.x, trained.split.test.y)
    assert expected["accuracy"] > 0.8  # a real, briefly trained model
    assert entry.metrics == entry.manifest.metrics
    assert entry.metrics == expected | {
        "heldout_samples": float(len(trained.split.test.y)),
        "participants": 3.0,
        "updates": 3.0,
        "train_loss": 0.5,
    }


def test_registry_latest_points_at_the_release(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    target = pipeline(trained, key_dir, store, None)
    release(target, trained.params, version=1)
    second = release(target, trained.params, version=2)
    registry = Registry(store)
    assert registry.versions("bc") == [1, 2]
    assert registry.latest("bc") == second
    assert second.parent_version == 1
    assert second.strategy == "fedavg"
    assert len(second.lineage.update_ids) == 3
    assert sorted(second.files) == [
        "manifest.json",
        "model.onnx",
        "release.json",
        "weights.fltensors",
    ]
    for name, key in second.files.items():
        assert key == f"models/bc/v000002/{name}"
        assert store.exists(key)
    stored = ReleaseManifest.model_validate_json(store.get("models/bc/v000002/release.json"))
    assert stored == second.manifest


def test_files_over_the_inline_limit_go_by_url(
    trained: Trained, key_dir: Path, store: ObjectStore, tmp_path: Path
) -> None:
    producer = RecordingProducer()
    entry = release(pipeline(trained, key_dir, store, producer, inline_max_bytes=0), trained.params)
    message = decode_message(producer.sent[0][2])
    assert message.tensors == {}
    manifest, files = device_files(producer.sent[0][2])
    for spec in manifest.files:
        assert spec.url == store.url_for(entry.files[spec.name])
    verify_release(manifest, files, load_public_keys(key_dir))
    (tmp_path / "weights.fltensors").write_bytes(files["weights.fltensors"])
    weights = load_weights(tmp_path / "weights.fltensors")  # what a training device loads
    assert (weights.architecture, weights.dataset, weights.seed) == ("logreg", DATASET, SEED)
    for name, value in get_parameters(weights.module).items():
        np.testing.assert_array_equal(value, trained.params[name])


def test_wrong_shape_raises_and_nothing_is_written(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    producer = RecordingProducer()
    params = dict(trained.params)
    params["linear.weight"] = np.zeros((2, 5), np.float32)
    with pytest.raises(ValidationError, match=r"params\['linear.weight'\].*shape \[2, 5\]"):
        release(pipeline(trained, key_dir, store, producer), params)
    assert store.list() == []
    assert producer.sent == []


def test_non_finite_parameters_are_refused(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    params = dict(trained.params)
    params["linear.bias"] = np.array([np.nan, 0.0], np.float32)
    with pytest.raises(ValidationError, match=r"params\['linear.bias'\]: holds NaN or Inf"):
        release(pipeline(trained, key_dir, store, None), params)
    assert store.list() == []


def test_parity_failure_publishes_and_records_nothing(
    trained: Trained,
    key_dir: Path,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
    scratch: Path,
) -> None:
    impossible = Tolerance(max_abs=1e-4, min_agreement=1.5, max_accuracy_drop=0.001)
    monkeypatch.setitem(TOLERANCES, "fp32", impossible)
    producer = RecordingProducer()
    with pytest.raises(ParityError, match="onnxruntime fp32"):
        release(pipeline(trained, key_dir, store, producer), trained.params)
    assert store.list() == []
    assert producer.sent == []
    assert list(scratch.iterdir()) == []


def test_a_release_too_big_for_the_log_fails_before_any_write(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    producer = RecordingProducer()
    target = pipeline(trained, key_dir, store, producer, max_message_bytes=1000)
    with pytest.raises(ValidationError, match=r"over the log's 1000; lower inline_max_bytes"):
        release(target, trained.params)
    assert store.list() == []
    assert producer.sent == []


def test_releasing_the_same_version_again_is_idempotent(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    producer = RecordingProducer()
    target = pipeline(trained, key_dir, store, producer)
    first = release(target, trained.params)
    objects = {key: store.get(key) for key in first.files.values()}
    second = release(target, trained.params)
    assert second.files == first.files
    for key, data in objects.items():
        if not key.endswith("release.json"):  # the manifest's id and time differ per publish
            assert store.get(key) == data, key
    assert second.manifest.signature == first.manifest.signature
    assert Registry(store).versions("bc") == [1]
    assert len(producer.sent) == 2


def test_a_failed_delivery_raises(trained: Trained, key_dir: Path, store: ObjectStore) -> None:
    producer = RecordingProducer(error=LogError("broker down"))
    with pytest.raises(PublishError, match="delivery failed: broker down"):
        release(pipeline(trained, key_dir, store, producer), trained.params)
    # recorded before publishing: releasing v1 again is the retry
    assert Registry(store).versions("bc") == [1]


def test_int8_files_are_labelled_and_verify(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    producer = RecordingProducer()
    entry = release(pipeline(trained, key_dir, store, producer, int8=True), trained.params)
    labels = {spec.name: (spec.format, spec.quantization) for spec in entry.manifest.files}
    assert labels == {
        "model.onnx": ("onnx", "fp32"),
        "model.int8.onnx": ("onnx", "int8"),
        "weights.fltensors": ("weights", "fp32"),
    }
    manifest, files = device_files(producer.sent[0][2])
    verify_release(manifest, files, load_public_keys(key_dir))


@pytest.mark.skipif(not tflite_available(), reason="the tflite extra is not installed")
def test_tflite_release_verifies(trained: Trained, key_dir: Path, store: ObjectStore) -> None:
    producer = RecordingProducer()
    release(pipeline(trained, key_dir, store, producer, tflite=None), trained.params)
    manifest, files = device_files(producer.sent[0][2])
    assert {spec.format for spec in manifest.files} == {"onnx", "tflite", "weights"}
    verify_release(manifest, files, load_public_keys(key_dir))


def test_tflite_asked_for_but_missing_is_a_config_error(
    trained: Trained, key_dir: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cloud_trainer.release.pipeline.tflite_available", lambda: False)
    with pytest.raises(ConfigError, match="tflite extra"):
        pipeline(trained, key_dir, store, None, tflite=True)
    assert pipeline(trained, key_dir, store, None, tflite=None).formats == ("onnx",)


def test_config_that_does_not_fit_the_data_is_refused(
    trained: Trained, key_dir: Path, store: ObjectStore
) -> None:
    with pytest.raises(ConfigError, match="does not fit data set 'breast_cancer'"):
        ReleasePipeline(
            ReleaseConfig(
                fleet="farm",
                model="bc",
                architecture="logreg",
                architecture_config={"in_features": 5},
                dataset=DATASET,
                split_seed=SEED,
            ),
            store=store,
            producer=None,
            key=Ed25519PrivateKey.generate(),
            key_id=KEY_ID,
        )


def test_release_arguments_are_checked(trained: Trained, key_dir: Path, store: ObjectStore) -> None:
    target = pipeline(trained, key_dir, store, None)
    with pytest.raises(ValidationError, match="lineage is of round"):
        target.release(
            trained.params, version=1, round_id="other", parent_version=None, lineage=lineage()
        )
    with pytest.raises(ValidationError, match="computed by the pipeline"):
        target.release(
            trained.params,
            version=1,
            round_id=ROUND,
            parent_version=None,
            lineage=lineage(),
            extra_metrics={"accuracy": 1.0},
        )
    assert store.list() == []


def test_evaluate_matches_torch_cross_entropy(trained: Trained) -> None:
    module = module_of(trained)
    x, y = trained.split.test.x, trained.split.test.y
    metrics = evaluate(module, x, y, batch_size=7)
    with torch.no_grad():
        logits = module(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits.double(), torch.from_numpy(y))
    assert metrics["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert metrics["accuracy"] == float((logits.argmax(1).numpy() == y).mean())
    assert evaluate(module, x, y) == evaluate(module, x, y)  # bit for bit


def test_evaluate_rejects_bad_labels(trained: Trained) -> None:
    module = module_of(trained)
    x: npt.NDArray[np.float32] = trained.split.test.x[:4]
    with pytest.raises(ValidationError, match=r"labels must lie in 0\.\.1"):
        evaluate(module, x, np.array([0, 1, 2, 0]))
    with pytest.raises(ValidationError, match="shape"):
        evaluate(module, x, np.array([0, 1]))
