"""The local services the suite relies on are real and answer over their own protocols."""

from __future__ import annotations

import socket
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_mosquitto_speaks_mqtt(mosquitto: Any) -> None:
    # A raw MQTT 3.1.1 CONNECT; a real broker answers CONNACK (0x20) with return code 0.
    connect = bytes([0x10, 0x12, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C])
    connect += bytes([0x00, 0x06]) + b"probe1"
    with socket.create_connection((mosquitto.host, mosquitto.port), timeout=5) as sock:
        sock.sendall(connect)
        reply = sock.recv(4)
    assert reply == bytes([0x20, 0x02, 0x00, 0x00])


def test_kafka_serves_metadata(kafka: Any) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    metadata = admin.list_topics(timeout=20)
    assert len(metadata.brokers) == 1


def test_s3_server_round_trip(s3: Any) -> None:
    bucket = s3.new_bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="probe", Body=b"fleet")
    reply = client.get_object(Bucket=bucket, Key="probe")
    assert reply["Body"].read() == b"fleet"
    assert "MinIO" in reply["ResponseMetadata"]["HTTPHeaders"].get("server", "")
