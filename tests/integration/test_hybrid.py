"""The hybrid loop through real Kafka and MinIO: a DDP job trains on the fleet's data stream,
offers its model on the seeds topic, and the federated trainer releases it as its next version
and announces the next round on it. A seed that does not fit the model goes to the dead-letter
topic and changes nothing."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.bridge.config import TopicMap
from bus.bridge.uplink import ERROR_HEADER
from bus.log import consume, open_log
from bus.protocol import ModelSeed, RoundAnnouncement, decode_message, encode_data
from bus.store import open_store
from cloud_trainer.checkpoint import CheckpointStore
from cloud_trainer.ddp.checkpoint import DdpCheckpoints
from cloud_trainer.release import Registry, generate_keypair
from tests.integration.ddp_helpers import SENSOR, ddp_config, produce_watch
from tests.integration.edge_helpers import AgentProcess, eventually, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FLEET, MODEL, JOB = "farm", "activity", "har"


def last_value(log_url: str, topic: str, expected: int) -> list[Any]:
    log = open_log(log_url)
    consumer = log.consumer(f"check-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    records = consume(consumer, expected, timeout=30)
    consumer.close()
    log.close()
    return records


@pytest.mark.timeout(600)
def test_a_ddp_model_becomes_the_base_of_the_next_round(
    kafka: Any, s3: Any, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = TopicMap(
        **{name: f"h-{suffix}.{name}" for name in TopicMap.model_fields},
    )
    produce_watch(kafka.url, topics.data, records=160, per_record=16, partitions=2)
    store_url = s3.url(s3.new_bucket(), "fleet")
    key = generate_keypair(tmp_path / "keys", "fleet-test").private
    trainer = AgentProcess(
        write_config(
            tmp_path / "trainer.yaml",
            fleet=FLEET,
            log_url=kafka.url,
            store_url=store_url,
            topics=topics.model_dump(),
            fresh_start="earliest",
            partitions=2,
            model={"name": MODEL, "architecture": "cnn1d", "config": SENSOR, "dataset": "watch"},
            rounds={"mode": "sync", "deadline_s": 600, "min_updates": 1},
            release={"private_key": key, "key_id": "fleet-test", "tflite": False},
        ),
        command=("trainer", "run"),
    )
    try:
        assert eventually(lambda: bool(trainer.logged("initial model released")), 120), (
            trainer.tail()
        )
        # a seed of another architecture: refused by name, nothing released
        log = open_log(kafka.url)
        producer = log.producer()
        wrong = ModelSeed(
            fleet=FLEET, model=MODEL, source="ddp-other", checkpoint=1, num_examples=8
        )
        producer.produce(
            topics.seeds,
            encode_data(wrong, {"head.weight": np.zeros((2, 3), np.float32)}),
            key=MODEL.encode(),
        )
        assert producer.flush(10) == 0
        producer.close()
        log.close()

        job = ddp_config(
            tmp_path / "ddp.yaml",
            job=JOB,
            log_url=kafka.url,
            store_url=store_url,
            topic=topics.data,
            seed={"model": MODEL, "fleet": FLEET, "topic": topics.seeds},
        )
        done = subprocess.run(
            [
                str(TORCHRUN),
                "--standalone",
                "--nproc-per-node",
                "1",
                "-m",
                "fleetlearn.cli",
                "trainer",
                "ddp",
                "--config",
                str(job),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert '"seed offered"' in done.stdout + done.stderr
        assert eventually(lambda: bool(trainer.logged("seed adopted")), 120), trainer.tail()
    finally:
        trainer.stop()

    adopted = trainer.logged("seed adopted")
    assert len(adopted) == 1
    assert adopted[0]["source"] == f"ddp-{JOB}"
    assert adopted[0]["examples"] == 160 * 16
    registry = Registry(open_store(store_url))
    seeded, initial = registry.get(MODEL, 1), registry.get(MODEL, 0)
    assert seeded.lineage.strategy == f"seed-ddp-{JOB}"
    assert seeded.lineage.update_ids == ()
    assert seeded.metrics["accuracy"] > initial.metrics["accuracy"] + 0.2  # it learned

    # version 1 is the DDP job's final model, tensor for tensor
    checkpoints = DdpCheckpoints(open_store(store_url), JOB)
    pointer = checkpoints.pointer()
    assert pointer is not None
    trained = checkpoints.state(pointer)["model"]
    trainer_state = CheckpointStore(open_store(store_url), MODEL).load()
    assert trainer_state is not None
    assert trainer_state.state.version == 1
    assert set(trainer_state.model) == set(trained)
    for name, value in trained.items():
        np.testing.assert_array_equal(trainer_state.model[name], value.numpy(), err_msg=name)
    assert trainer_state.state.seed_offsets == {0: 2}  # both seeds dealt with, not re-read

    # the round devices see next starts from it
    rounds = [decode_message(r.value).envelope for r in last_value(kafka.url, topics.rounds, 2)]
    assert isinstance(rounds[-1], RoundAnnouncement)
    assert rounds[-1].base_version == 1
    reasons = [
        (r.header(ERROR_HEADER) or b"").decode() for r in last_value(kafka.url, topics.dlq, 1)
    ]
    assert any("seed refused" in r and "missing [" in r for r in reasons), reasons
