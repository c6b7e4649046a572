"""The trainer service on the embedded backends (SQLite log, directory store): no network.

Asynchronous buffered rounds (FedBuff) end to end: versions are made every `buffer_size`
updates, a stale update still counts (weighted down) while within `max_staleness`, an older one
goes to the dead-letter topic, and every version is released and checkpointed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bus.errors import ConfigError
from bus.log import consume, open_log
from bus.protocol import CodecSpec, ModelUpdate, decode_message, encode_update
from bus.store import open_store
from cloud_trainer.checkpoint import CheckpointStore
from cloud_trainer.config import TrainerConfig
from cloud_trainer.release import Registry, generate_keypair
from cloud_trainer.service import TrainerService
from cloud_trainer.strategies import staleness_weight

MODEL = "cancer"


def config(tmp_path: Path) -> TrainerConfig:
    key = generate_keypair(tmp_path / "keys", "k1").private
    board = tmp_path / "board"
    return TrainerConfig.model_validate(
        {
            "fleet": "farm",
            "log_url": f"sqlite:///{tmp_path / 'log.db'}",
            "store_url": f"file://{tmp_path / 'store'}",
            "partitions": 2,
            "model": {"name": MODEL, "architecture": "logreg", "dataset": "breast_cancer"},
            "rounds": {
                "mode": "async",
                "buffer_size": 2,
                "max_staleness": 1,
                "staleness_exponent": 1.0,
                "late_grace_s": 0.0,
            },
            "release": {"private_key": str(key), "key_id": "k1", "tflite": False},
            "poll_s": 0.05,
            "metrics": {"tensorboard_dir": str(board)},
        }
    )


def update(device: str, version: int, value: float, examples: int) -> bytes:
    header = ModelUpdate(
        fleet="farm",
        device_id=device,
        round_id=f"{MODEL}-v{version:06d}-a",
        model=MODEL,
        base_version=version,
        num_examples=examples,
        codec=CodecSpec(name="fp32"),
    )
    delta = {
        "linear.weight": np.full((2, 30), value, np.float32),
        "linear.bias": np.full((2,), value, np.float32),
    }
    return encode_update(header, delta)[0]


def run_until(service: TrainerService, version: int, steps: int = 400) -> None:
    for _ in range(steps):
        service.step()
        assert service.coordinator is not None
        if service.coordinator.version >= version:
            return
    raise AssertionError(f"still at version {service.coordinator and service.coordinator.version}")


def test_async_buffered_rounds_weight_stale_updates_and_refuse_older_ones(tmp_path: Path) -> None:
    settings = config(tmp_path)
    service = TrainerService(settings).start()
    try:
        log = open_log(settings.log_url)
        producer = log.producer()

        def send(value: bytes) -> None:
            producer.produce(settings.topics.update, value)

        assert service.coordinator is not None
        v0 = {k: v.copy() for k, v in service.coordinator.model.items()}

        send(update("a", 0, 0.1, 10))
        send(update("b", 0, 0.3, 30))
        producer.flush()
        run_until(service, 1)
        v1 = service.coordinator.model
        expected = (0.1 * 10 + 0.3 * 30) / 40  # fresh updates: plain FedAvg
        np.testing.assert_allclose(v1["linear.bias"] - v0["linear.bias"], expected, rtol=1e-6)

        send(update("c", 0, 1.0, 10))  # one version stale: weight 10 / 2
        send(update("d", 1, 0.0, 5))  # fresh: weight 5
        producer.flush()
        run_until(service, 2)
        v2 = service.coordinator.model
        stale = 10 * staleness_weight(1, 1.0)
        np.testing.assert_allclose(
            v2["linear.bias"] - v1["linear.bias"], (1.0 * stale + 0.0 * 5) / (stale + 5), rtol=1e-6
        )

        send(update("e", 0, 9.0, 10))  # two versions stale: over max_staleness
        producer.flush()
        for _ in range(20):
            service.step()
        dlq = log.consumer("check")
        dlq.subscribe([settings.topics.dlq])
        records = consume(dlq, 1, timeout=5)
        assert len(records) == 1
        assert b"not open" in (records[0].header("fleetlearn-error") or b"")
        assert decode_message(records[0].value).envelope.device_id == "e"  # type: ignore[union-attr]
    finally:
        service.close()

    store = open_store(settings.store_url)
    checkpoint = CheckpointStore(store, MODEL).load()
    assert checkpoint is not None
    assert checkpoint.state.version == 2
    np.testing.assert_array_equal(checkpoint.model["linear.bias"], v2["linear.bias"])
    entry = Registry(store).get(MODEL, 2)
    assert sorted(entry.lineage.device_ids) == ["c", "d"]
    assert Registry(store).versions(MODEL) == [0, 1, 2]
    assert list((tmp_path / "board").glob("events.out.tfevents.*"))  # TensorBoard scalars
    metrics = service.metrics.registry
    assert metrics.get_sample_value("trainer_versions_total", {"model": MODEL}) == 2
    assert metrics.get_sample_value("trainer_model_version", {"model": MODEL}) == 2
    assert metrics.get_sample_value("trainer_round_participants", {"model": MODEL}) == 2
    rejected = {"model": MODEL, "reason": "not_open"}
    assert metrics.get_sample_value("trainer_updates_rejected_total", rejected) == 1


def test_a_restarted_service_resumes_at_its_checkpoint(tmp_path: Path) -> None:
    settings = config(tmp_path)
    first = TrainerService(settings).start()
    first.close()
    again = TrainerService(settings).start()
    try:
        assert again.coordinator is not None
        assert again.coordinator.version == 0
        assert again.coordinator.round.round_id == f"{MODEL}-v000000-a"
    finally:
        again.close()


def test_a_missing_signing_key_is_a_clear_error(tmp_path: Path) -> None:
    base = config(tmp_path)
    settings = base.model_copy(
        update={"release": base.release.model_copy(update={"private_key": tmp_path / "nope.key"})}
    )
    with pytest.raises(ConfigError, match=r"nope\.key"):
        TrainerService(settings)
