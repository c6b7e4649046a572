"""The trainer service on the embedded backends (SQLite log, directory store): no network.

Asynchronous buffered rounds (FedBuff) end to end: versions are made every `buffer_size`
updates, a stale update still counts (weighted down) while within `max_staleness`, an older one
goes to the dead-letter topic, and every version is released and checkpointed. Sync rounds
measured on the service's clock, across a restart; a seed adopted as a version.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.errors import ConfigError
from bus.log import consume, open_log
from bus.protocol import (
    CodecSpec,
    ModelSeed,
    ModelUpdate,
    decode_message,
    encode_data,
    encode_update,
)
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


def update(device: str, version: int, value: float, examples: int, suffix: str = "a") -> bytes:
    header = ModelUpdate(
        fleet="farm",
        device_id=device,
        round_id=f"{MODEL}-v{version:06d}-{suffix}",
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
    # Async: each version's round, from its announcement until its buffer filled.
    rounds = service.metrics.registry
    assert rounds.get_sample_value("trainer_round_duration_seconds_count", {"model": MODEL}) == 2
    assert (
        rounds.get_sample_value("trainer_round_duration_seconds_sum", {"model": MODEL}) or 0
    ) > 0


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


class Clock:
    """The service's clock: real time moved by `shift` seconds (the log stamps real time)."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift

    def __call__(self) -> float:
        return time.time() + self.shift


def sync_config(tmp_path: Path) -> TrainerConfig:
    base = config(tmp_path).model_dump(mode="json")
    rounds = {"mode": "sync", "deadline_s": 3600, "min_updates": 2, "target_updates": 2}
    return TrainerConfig.model_validate({**base, "partitions": 1, "rounds": rounds})


def round_figures(service: TrainerService) -> tuple[float | None, float | None]:
    labels = {"model": MODEL}
    registry = service.metrics.registry
    return (
        registry.get_sample_value("trainer_round_duration_seconds_count", labels),
        registry.get_sample_value("trainer_round_duration_seconds_sum", labels),
    )


def close_round(service: TrainerService, settings: TrainerConfig, version: int) -> None:
    producer = open_log(settings.log_url).producer()
    for device, value in (("a", 0.1), ("b", 0.2)):
        producer.produce(settings.topics.update, update(device, version, value, 10, "0"))
    producer.flush()
    run_until(service, version + 1)


def test_a_sync_round_is_timed_from_its_announcement_across_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sync_config(tmp_path)
    clock = Clock()
    first = TrainerService(settings, clock=clock).start()
    try:
        assert first.coordinator is not None
        announced = first.coordinator.round.created_at
        assert round_figures(first) == (0.0, 0.0)  # exported before any round closed
        clock.shift = 42.0  # the round stays open 42 s longer than the test takes
        close_round(first, settings, 0)
        count, total = round_figures(first)
        assert count == 1
        assert total is not None
        assert 42.0 <= total <= clock() - announced
        assert total < 42.0 + 60
        bucket = {"model": MODEL, "le": "60.0"}
        registry = first.metrics.registry
        assert registry.get_sample_value("trainer_round_duration_seconds_bucket", bucket) == 1
        next_announced = first.coordinator.round.created_at
    finally:
        first.close()

    # Restarted 100 s later (by its clock): round v1 was announced before the restart, and is
    # timed from that announcement, kept in the checkpoint, not from the restart.
    later = Clock(shift=142.0)
    second = TrainerService(settings, clock=later).start()
    try:
        assert second.coordinator is not None
        assert second.coordinator.round.created_at == next_announced
        close_round(second, settings, 1)
        count, total = round_figures(second)
        assert count == 1
        assert total is not None
        assert 100.0 <= total <= later() - next_announced < 100.0 + 60
        behind_from = second.coordinator.round.created_at
    finally:
        second.close()

    # A clock behind the announcement (set back, another machine's): no duration at all.
    behind = Clock(shift=-3600.0)
    third = TrainerService(settings, clock=behind).start()
    try:
        with caplog.at_level(logging.WARNING, logger="cloud_trainer.service"):
            close_round(third, settings, 2)
        assert round_figures(third) == (0.0, 0.0)
        assert (
            third.metrics.registry.get_sample_value("trainer_versions_total", {"model": MODEL}) == 1
        )
        warned = [r for r in caplog.records if r.getMessage().startswith("round duration not")]
        assert len(warned) == 1
        assert warned[0].__dict__["announced_at"] == behind_from
    finally:
        third.close()


def test_an_adopted_seed_is_released_announced_and_checkpointed_but_not_timed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sync_config(tmp_path)
    service = TrainerService(settings).start()
    try:
        assert service.coordinator is not None
        dropped = service.coordinator.round.round_id
        tensors: dict[str, Any] = {
            "linear.weight": np.full((2, 30), 0.5, np.float32),
            "linear.bias": np.array([1.0, -1.0], np.float32),
        }
        header = ModelSeed(
            fleet="farm", model=MODEL, source="ddp-job", checkpoint=3, num_examples=640
        )
        producer = open_log(settings.log_url).producer()
        producer.produce(settings.topics.seeds, encode_data(header, tensors))
        producer.flush()
        with caplog.at_level(logging.INFO):
            run_until(service, 1)
        assert service.coordinator.round.round_id == f"{MODEL}-v000001-0"
        np.testing.assert_array_equal(service.coordinator.model["linear.bias"], [1.0, -1.0])
        messages = [r.getMessage() for r in caplog.records]
        order = ["version released", "round announced", "seed adopted"]
        assert [m for m in messages if m in order] == order
        adopted = next(r for r in caplog.records if r.getMessage() == "seed adopted")
        assert (adopted.__dict__["version"], adopted.__dict__["dropped_round"]) == (1, dropped)
        registry = service.metrics.registry
        assert registry.get_sample_value("trainer_versions_total", {"model": MODEL}) == 1
        assert round_figures(service) == (0.0, 0.0)  # no round closed: the open one was dropped
    finally:
        service.close()
    store = open_store(settings.store_url)
    checkpoint = CheckpointStore(store, MODEL).load()
    assert checkpoint is not None
    assert checkpoint.state.version == 1
    assert checkpoint.state.seed_offsets == {0: 1}
    entry = Registry(store).get(MODEL, 1)
    assert entry.lineage.strategy == "seed-ddp-job"
    assert entry.round_id is None
    assert entry.metrics["seed_examples"] == 640.0
