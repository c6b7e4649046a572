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


def test_kafka_storage_formats_with_a_cluster_id_starting_with_a_dash(
    kafka: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One random id in 64 starts with "-"; the storage tool must still read it as the value.
    from fleetlearn.services import kafka as kafka_module

    if not isinstance(kafka, kafka_module.KafkaService):
        pytest.skip("in container mode Kafka's own image formats its storage")
    monkeypatch.setattr(kafka_module, "_cluster_id", lambda: "-Ab3xYz0_qRsTuVwXyZ12w")
    service = kafka_module.KafkaService(tmp_path / "kafka", port=1)
    service.workdir.mkdir(parents=True)
    service._format(service._write_config(2))
    meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
    assert "cluster.id=-Ab3xYz0_qRsTuVwXyZ12w" in meta
