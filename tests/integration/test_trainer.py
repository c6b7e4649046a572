"""The cloud trainer against a real Kafka and a real S3 server (MinIO).

The update stream is what devices would send: deltas from real local training on shards of the
breast-cancer data set, plus the kinds of bad input a fleet produces (NaN, a wrong shape, a
duplicate, a stale round, bytes that are not a message). A trainer SIGKILLed in the middle of a
round and restarted must end with a global model bit-identical to a trainer that never stopped.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from bus.bridge.config import TopicMap
from bus.bridge.uplink import ERROR_HEADER
from bus.log import Log, consume, open_log
from bus.protocol import CodecSpec, ModelUpdate, decode_message, encode_update, write_tensors
from bus.protocol.frame import pack_frame
from bus.store import open_store
from cloud_trainer.checkpoint import CheckpointStore
from cloud_trainer.release import Registry, generate_keypair
from models.datasets.partition import partition_iid
from models.params import get_parameters, parameter_delta
from models.train import fit
from models.workflow import build_seeded, default_config, prepare_data
from tests.integration.edge_helpers import AgentProcess, eventually, write_config

pytestmark = pytest.mark.integration

FLEET = "farm"
MODEL = "cancer"
DEVICES = 4
VERSIONS = 3


@dataclass
class Stream:
    topics: TopicMap
    log: Log
    rounds: list[list[bytes]]  # per round, the good updates in the order they are sent
    good_ids: list[set[str]]

    def send(self, values: list[bytes], device_keys: list[str]) -> None:
        producer = self.log.producer()
        for value, key in zip(values, device_keys, strict=True):
            producer.produce(self.topics.update, value, key=key.encode())
            producer.flush(10)
            time.sleep(0.005)  # distinct record timestamps: the order is the log's, not a tie
        producer.close()


def round_id(version: int) -> str:
    return f"{MODEL}-v{version:06d}-0"


def local_updates() -> tuple[list[list[tuple[str, bytes]]], list[set[str]]]:
    """Per round, each device's update: real training on its shard from the initial model."""
    split = prepare_data("breast_cancer", seed=0)
    config = default_config("logreg", split.train)
    base = get_parameters(build_seeded("logreg", config, 0))
    shards = partition_iid(split.train, DEVICES, seed=1)
    rounds: list[list[tuple[str, bytes]]] = []
    ids: list[set[str]] = []
    for number in range(1, VERSIONS + 1):
        updates = []
        for device, shard in enumerate(shards):
            module = build_seeded("logreg", config, 0)
            fit(
                module,
                shard.x,
                shard.y,
                epochs=1 + number,
                batch_size=16,
                lr=0.05,
                seed=100 * number + device,
            )
            delta = parameter_delta(get_parameters(module), base)
            header = ModelUpdate(
                fleet=FLEET,
                device_id=f"pi-{device}",
                round_id=round_id(number - 1),
                model=MODEL,
                base_version=number - 1,
                num_examples=len(shard.y) + 7 * device,
                codec=CodecSpec(name="fp32"),
                metrics={"loss_after": 0.1 * device},
            )
            data, _ = encode_update(header, delta)
            updates.append((f"pi-{device}", data))
        rounds.append(updates)
        ids.append({decode_message(u).envelope.id for _, u in updates})
    return rounds, ids


def bad_updates(sample: bytes) -> list[tuple[str, bytes, str]]:
    """(device, bytes, expected reason fragment) for what must go to the dead-letter topic."""
    good = decode_message(sample)
    header = good.envelope
    assert isinstance(header, ModelUpdate)
    nan = {k: np.full_like(v, np.nan) for k, v in good.tensors.items()}
    wrong_shape = {k: np.zeros((3,), np.float32) for k in good.tensors}
    stale = header.model_copy(update={"round_id": "cancer-v000099-0", "id": uuid.uuid4().hex})
    fresh = header.model_copy(update={"id": uuid.uuid4().hex, "device_id": "pi-evil"})
    return [
        ("pi-evil", _unchecked_update(fresh, nan), "NaN"),
        ("pi-evil", encode_update(fresh, wrong_shape)[0], "shape"),
        ("pi-evil", encode_update(stale, good.tensors)[0], "not open"),
        ("pi-evil", b"definitely not a message", "frame"),
    ]


def _unchecked_update(header: ModelUpdate, tensors: dict[str, np.ndarray]) -> bytes:
    """A frame our encoder would refuse to build (it checks values as a receiver would)."""
    raw = write_tensors(tensors)
    fields = header.model_dump(mode="json", by_alias=True) | {
        "tensors": [
            {"name": k, "dtype": "F32", "shape": list(v.shape)} for k, v in tensors.items()
        ],
        "payload": {
            "length": len(raw),
            "raw_length": len(raw),
            "xxh3_128": xxhash.xxh3_128_hexdigest(raw),
            "compression": "none",
        },
    }
    return pack_frame(json.dumps(fields).encode(), raw, compressed=False)


def trainer_config(
    tmp_path: Path, name: str, kafka: Any, store_url: str, topics: TopicMap, key: Path
) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        fleet=FLEET,
        log_url=kafka.url,
        store_url=store_url,
        topics=topics.model_dump(),
        fresh_start="earliest",
        partitions=3,
        model={"name": MODEL, "architecture": "logreg", "dataset": "breast_cancer"},
        rounds={
            "mode": "sync",
            "max_versions": VERSIONS,
            "deadline_s": 600,
            "min_updates": DEVICES,
            "target_updates": DEVICES,
        },
        strategy={"name": "fedadam", "server_lr": 0.05},
        validation={"max_norm": 1000.0},
        release={"private_key": key, "key_id": "fleet-test", "tflite": False},
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_keypair(tmp_path / "keys", "fleet-test").private


def final_model(store_url: str) -> dict[str, np.ndarray]:
    checkpoint = CheckpointStore(open_store(store_url), MODEL).load()
    assert checkpoint is not None
    assert checkpoint.state.version == VERSIONS
    return checkpoint.model


@pytest.mark.timeout(600)
def test_sigkill_mid_round_resumes_to_a_bit_identical_model(
    kafka: Any, s3: Any, tmp_path: Path, key: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = TopicMap(
        update=f"t-{suffix}.updates",
        status=f"t-{suffix}.status",
        rounds=f"t-{suffix}.rounds",
        releases=f"t-{suffix}.releases",
        dlq=f"t-{suffix}.dlq",
        data=f"t-{suffix}.data",
    )
    log = open_log(kafka.url)
    log.create_topics({topics.update: 3})
    rounds, good_ids = local_updates()
    bad = bad_updates(rounds[0][0][1])
    stream = Stream(topics, log, [[u for _, u in r] for r in rounds], good_ids)
    bucket = s3.new_bucket()
    killed_url, straight_url = s3.url(bucket, "killed"), s3.url(bucket, "straight")
    killed_cfg = trainer_config(tmp_path, "killed", kafka, killed_url, topics, key)

    # Rounds 1 and 2 whole, with the bad inputs and a duplicate inside round 2; half of round 3.
    first = rounds[0][:2] + [(d, u) for d, u, _ in bad] + rounds[0][2:]
    second = [*rounds[1][:1], rounds[1][0], *rounds[1][1:]]
    stream.send([u for _, u in first], [d for d, _ in first])
    stream.send([u for _, u in second], [d for d, _ in second])
    stream.send([u for _, u in rounds[2][:2]], [d for d, _ in rounds[2][:2]])

    trainer = AgentProcess(killed_cfg, command=("trainer", "run"))
    try:

        def counted() -> list[dict[str, Any]]:
            return [e for e in trainer.logged("update counted") if e.get("round") == round_id(2)]

        assert eventually(lambda: len(counted()) == 2, 240), trainer.tail()
        time.sleep(0.3)  # mid-round: two of four counted, the round still open
        assert trainer.process.poll() is None
    finally:
        trainer.kill()

    checkpoint = CheckpointStore(open_store(killed_url), MODEL).load()
    assert checkpoint is not None
    assert checkpoint.state.version == 2

    stream.send([u for _, u in rounds[2][2:]], [d for d, _ in rounds[2][2:]])
    restarted = AgentProcess(killed_cfg, command=("trainer", "run"))
    assert restarted.process.wait(timeout=240) == 0, restarted.tail()
    assert restarted.logged("resumed from checkpoint")

    straight = AgentProcess(
        trainer_config(tmp_path, "straight", kafka, straight_url, topics, key),
        command=("trainer", "run"),
    )
    assert straight.process.wait(timeout=240) == 0, straight.tail()

    after_kill, uninterrupted = final_model(killed_url), final_model(straight_url)
    assert list(after_kill) == list(uninterrupted)
    assert write_tensors(after_kill) == write_tensors(uninterrupted)  # bit for bit

    # Each version counts exactly its round's four good updates: none lost, none twice.
    registry = Registry(open_store(killed_url))
    for version in range(1, VERSIONS + 1):
        entry = registry.get(MODEL, version)
        assert set(entry.lineage.update_ids) == good_ids[version - 1]
        assert len(entry.lineage.update_ids) == DEVICES
        assert entry.metrics["participants"] == DEVICES
        assert 0.5 < entry.metrics["accuracy"] <= 1.0
    assert registry.latest(MODEL) is not None

    # The bad inputs and the duplicate are in the dead-letter topic, each with its reason.
    reasons = [
        (r.header(ERROR_HEADER) or b"").decode()
        for r in _read_all(log, topics.dlq, expected=2 * (len(bad) + 1))
    ]
    for _, _, fragment in bad:
        assert any(fragment in reason for reason in reasons), (fragment, reasons)
    assert any("already" in reason for reason in reasons), reasons


def _read_all(log: Log, topic: str, expected: int) -> list[Any]:
    consumer = log.consumer(f"check-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    records = consume(consumer, expected, timeout=30)
    consumer.close()
    assert len(records) >= expected // 2, records
    return records
