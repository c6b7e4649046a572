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
from bus.log import consume, open_log
from bus.mqtt import MqttMessage, connect_mqtt
from bus.protocol import (
    CodecSpec,
    ModelUpdate,
    RoundAnnouncement,
    decode_message,
    encode_message,
    encode_update,
    peek_header,
)
from bus.store import open_store
from bus.store.claims import resolve_claim
from bus.topics import rounds_topic, update_topic
from tests.integration.bridge_helpers import (
    bridge_config,
    header_of,
    publish_all,
    read_ids,
    update,
    wait_until_bridging,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def running(mosquitto: Any, kafka: Any) -> Iterator[Bridge]:
    bridge = Bridge(bridge_config(mosquitto, kafka)).start()
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    yield bridge
    stop.set()
    thread.join(10)
    bridge.close()


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
    reasons = sorted(header_of(r, "fleetlearn-error") for r in dead)
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
    config = bridge_config(mosquitto, kafka, downlink=False, max_inflight=50)
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
    wait_until_bridging(config, open_log(kafka.url))  # subscribed with its persistent session
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


def test_large_updates_travel_by_claim_check(mosquitto: Any, kafka: Any, s3: Any) -> None:
    store_url = s3.url(s3.new_bucket(), "bridge")
    config = bridge_config(
        mosquitto, kafka, downlink=False, max_record_bytes=64 * 1024, store_url=store_url
    )
    bridge = Bridge(config).start()
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    header = ModelUpdate(
        fleet=config.fleet,
        device_id="dev-big",
        round_id="r1",
        model="m",
        base_version=0,
        num_examples=10,
        codec=CodecSpec(name="fp32"),
    )
    weights = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)  # 400 KB
    big = encode_update(header, {"w": weights})[0]
    small = update(config.fleet, "dev-big", 1)
    try:
        device = connect_mqtt(config.mqtt_url, client_id=f"dev-big-{uuid.uuid4().hex[:6]}")
        for payload in (big, small):
            device.publish(update_topic(bridge.prefix, "dev-big"), payload).wait(10)
        device.close()
        consumer = open_log(kafka.url).consumer(f"claims-{uuid.uuid4().hex[:6]}")
        consumer.subscribe([config.topics.update])
        records = consume(consumer, 2, 60)
        consumer.close()
    finally:
        stop.set()
        thread.join(10)
        bridge.close()
    assert len(records) == 2
    by_id = {header_of(r, "fleetlearn-id"): r.value for r in records}
    big_record = by_id[str(peek_header(big).id)]
    assert len(big_record) < 4096  # the log carries the reference only
    store = open_store(store_url)
    assert resolve_claim(big_record, store) == big
    np.testing.assert_array_equal(decode_message(big).tensors["w"], weights)
    assert resolve_claim(by_id[str(peek_header(small).id)], store) == small  # small: inline
