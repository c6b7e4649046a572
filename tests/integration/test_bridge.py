"""The bridge on real Mosquitto and Kafka: nothing lost or invented; bad input dead-lettered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.bridge.bridge import Bridge
from bus.bridge.config import BridgeConfig, TopicMap
from bus.log import Log, Record, consume, open_log
from bus.mqtt import MqttMessage, connect_mqtt
from bus.protocol import CodecSpec, ModelUpdate, RoundAnnouncement, encode_message, encode_update
from bus.topics import rounds_topic, update_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _config(mosquitto: Any, kafka: Any, **changes: Any) -> BridgeConfig:
    tag = uuid.uuid4().hex[:8]
    topics = TopicMap(
        update=f"u-{tag}",
        data=f"d-{tag}",
        status=f"s-{tag}",
        rounds=f"r-{tag}",
        releases=f"rel-{tag}",
        dlq=f"dlq-{tag}",
    )
    fields: dict[str, Any] = {
        "mqtt_url": mosquitto.url,
        "log_url": kafka.url,
        "fleet": f"f{tag}",
        "client_id": f"bridge-{tag}",
        "topics": topics,
        "partitions": 3,
    }
    return BridgeConfig(**(fields | changes))


@pytest.fixture
def running(mosquitto: Any, kafka: Any) -> Iterator[Bridge]:
    bridge = Bridge(_config(mosquitto, kafka)).start()
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    yield bridge
    stop.set()
    thread.join(10)
    bridge.close()


def update(fleet: str, device: str, seq: int) -> bytes:
    header = ModelUpdate(
        fleet=fleet,
        device_id=device,
        round_id="r1",
        model="m",
        base_version=0,
        num_examples=seq + 1,
        codec=CodecSpec(name="fp32"),
    )
    return encode_update(header, {"w": np.full(4, seq, dtype=np.float32)})[0]


def publish_all(url: str, prefix: str, fleet: str, devices: int, per_device: int) -> set[str]:
    """Publish from each device and wait for every PUBACK; returns the message ids sent."""
    from bus.protocol import peek_header

    ids: set[str] = set()
    clients = [
        connect_mqtt(url, client_id=f"dev-{i}-{uuid.uuid4().hex[:6]}") for i in range(devices)
    ]
    handles = []
    for seq in range(per_device):
        for i, client in enumerate(clients):
            payload = update(fleet, f"dev-{i}", seq)
            ids.add(peek_header(payload).id)
            handles.append(client.publish(update_topic(prefix, f"dev-{i}"), payload))
    for handle in handles:
        handle.wait(30)
    for client in clients:
        client.close()
    return ids


def read_ids(log: Log, topic: str, expected: int, timeout: float = 60) -> list[str]:
    consumer = log.consumer(f"check-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    records = consume(consumer, expected, timeout)
    extra = consume(consumer, 1, 1.0)
    consumer.close()
    return [_header(r, "fleetlearn-id") for r in records + extra]


def _header(record: Record, name: str) -> str:
    value = record.header(name)
    assert value is not None, name
    return value.decode()


def test_n_in_exactly_n_out(running: Bridge, kafka: Any) -> None:
    config = running.config
    sent = publish_all(config.mqtt_url, running.prefix, config.fleet, devices=5, per_device=40)
    received = read_ids(open_log(kafka.url), config.topics.update, len(sent))
    assert len(received) == len(sent) == 200
    assert set(received) == sent


def test_malformed_and_spoofed_go_to_the_dead_letter_topic(running: Bridge, kafka: Any) -> None:
    config = running.config
    client = connect_mqtt(config.mqtt_url, client_id=f"evil-{uuid.uuid4().hex[:6]}")
    client.publish(update_topic(running.prefix, "dev-1"), b"not a message").wait(10)
    client.publish(update_topic(running.prefix, "dev-1"), update(config.fleet, "dev-2", 0)).wait(10)
    good = update(config.fleet, "dev-1", 0)
    client.publish(update_topic(running.prefix, "dev-1"), good).wait(10)
    client.close()
    consumer = open_log(kafka.url).consumer(f"dlq-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([config.topics.dlq])
    dead = consume(consumer, 2, 60)
    consumer.close()
    reasons = sorted(_header(r, "fleetlearn-error") for r in dead)
    assert len(reasons) == 2
    assert "frame.magic" in reasons[1] or "magic" in " ".join(reasons)
    assert any("differs from the topic's 'dev-1'" in r for r in reasons)
    assert len(read_ids(open_log(kafka.url), config.topics.update, 1)) == 1  # the bridge kept going


def test_rounds_are_published_retained(running: Bridge, kafka: Any) -> None:
    config = running.config
    announcement = encode_message(
        RoundAnnouncement(
            fleet=config.fleet, round_id="r-9", model="m", base_version=3, deadline=time.time() + 60
        )
    )
    producer = open_log(kafka.url).producer()
    producer.produce(config.topics.rounds, announcement)
    producer.flush(30)
    time.sleep(2)  # let the bridge publish before the late device connects
    got: list[MqttMessage] = []
    device = connect_mqtt(
        config.mqtt_url,
        client_id=f"late-{uuid.uuid4().hex[:6]}",
        subscriptions={rounds_topic(running.prefix): got.append},
    )
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    device.close()
    assert got
    assert got[0].retain
    assert got[0].payload == announcement


def test_sigkill_mid_stream_loses_nothing(mosquitto: Any, kafka: Any, tmp_path: Path) -> None:
    config = _config(mosquitto, kafka, downlink=False, max_inflight=50)
    (tmp_path / "bridge.yaml").write_text(config.model_dump_json())
    command = [
        sys.executable,
        "-m",
        "fleetlearn.cli",
        "bridge",
        "run",
        "--config",
        str(tmp_path / "bridge.yaml"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    time.sleep(4)  # subscribed with its persistent session
    sent_holder: dict[str, set[str]] = {}
    publisher = threading.Thread(
        target=lambda: sent_holder.setdefault(
            "ids",
            publish_all(
                config.mqtt_url, config.prefix or f"fleetlearn/{config.fleet}", config.fleet, 4, 150
            ),
        )
    )
    publisher.start()
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    publisher.join(60)
    second = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        sent = sent_holder["ids"]
        received = read_ids(open_log(kafka.url), config.topics.update, len(sent), timeout=90)
        assert set(received) == sent  # every message arrived; duplicates allowed after a crash
    finally:
        second.terminate()
        second.wait(30)
