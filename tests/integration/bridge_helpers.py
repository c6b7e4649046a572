"""What the bridge tests share: a config on fresh topics, devices that publish, a checker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from bus.bridge.config import BridgeConfig, TopicMap
from bus.log import Log, Record, consume
from bus.mqtt import connect_mqtt
from bus.protocol import CodecSpec, ModelUpdate, Status, encode_message, encode_update, peek_header
from bus.topics import status_topic, update_topic


def bridge_config(mosquitto: Any, kafka: Any, **changes: Any) -> BridgeConfig:
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
    """Every record's id, read until `expected` distinct ids (duplicates do not count toward
    it: after a crash they take the place of messages still to come) or `timeout`."""
    consumer = log.consumer(f"check-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while len(set(ids)) < expected and time.monotonic() < deadline:
        batch = consume(consumer, expected - len(set(ids)), deadline - time.monotonic())
        ids += [header_of(r, "fleetlearn-id") for r in batch]
    ids += [header_of(r, "fleetlearn-id") for r in consume(consumer, 1000, 1.0)]
    consumer.close()
    return ids


def header_of(record: Record, name: str) -> str:
    value = record.header(name)
    assert value is not None, name
    return value.decode()


def wait_until_bridging(config: BridgeConfig, log: Log, timeout: float = 60) -> None:
    """Return once the bridge carries messages end to end (its subscriptions are in place).

    A bridge started in another process subscribes some time after it starts, and a broker
    drops what is published before any subscription exists; probes on the status topic show
    when it is live without touching the update topic the tests count.
    """
    prefix = config.prefix or f"fleetlearn/{config.fleet}"
    log.create_topics({config.topics.status: config.partitions})  # the bridge may not have yet
    consumer = log.consumer(f"probe-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([config.topics.status])
    probe = connect_mqtt(config.mqtt_url, client_id=f"probe-{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status = Status(fleet=config.fleet, device_id="probe", online=True)
            probe.publish(status_topic(prefix, "probe"), encode_message(status)).wait(10)
            if consume(consumer, 1, 0.5):
                return
        raise AssertionError(f"the bridge carried no probe within {timeout} s")
    finally:
        probe.close()
        consumer.close()
