"""What the bridge tests share: a config on fresh topics, devices that publish, a checker."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from bus.bridge.config import BridgeConfig, TopicMap
from bus.log import Log, Record, consume
from bus.mqtt import connect_mqtt
from bus.protocol import CodecSpec, ModelUpdate, encode_update, peek_header
from bus.topics import update_topic


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
    consumer = log.consumer(f"check-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    records = consume(consumer, expected, timeout)
    extra = consume(consumer, 1, 1.0)
    consumer.close()
    return [header_of(r, "fleetlearn-id") for r in records + extra]


def header_of(record: Record, name: str) -> str:
    value = record.header(name)
    assert value is not None, name
    return value.decode()
