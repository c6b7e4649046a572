"""The MQTT collector against a real Mosquitto: sensors on the device publish, samples come out."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from bus.mqtt import connect_mqtt
from edge_agent.buffer import Sample
from edge_agent.collectors.mqtt_topic import MqttCollector
from edge_agent.config import MqttCollectorConfig
from tests.unit.edge_agent.test_collectors import DEADLINE_S, Sink, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_mqtt_collector_takes_objects_and_lists_and_rejects_garbage(mosquitto: Any) -> None:
    broker = mosquitto
    topic = f"sensors-{uuid.uuid4().hex[:8]}"
    config = MqttCollectorConfig(url=broker.url, topic=f"{topic}/#", stream="s", name="mq")
    collector = MqttCollector(config)
    sink = Sink()
    publisher = connect_mqtt(broker.url, client_id="test-collectors-publisher")
    try:
        with running(collector, sink):
            assert collector.ready.wait(DEADLINE_S)
            payloads: list[bytes] = [
                b"not json",
                json.dumps({"features": ["warm"]}).encode(),
                json.dumps({"features": [1, 2], "label": 1, "at": 1700000000.5}).encode(),
                json.dumps([{"features": [3, 4]}, {"label": 2}, {"features": [5, 6]}]).encode(),
                b"\xff",
                json.dumps({"features": [7, 8], "label": None}).encode(),
            ]
            for payload in payloads:
                publisher.publish(f"{topic}/a", payload).wait(DEADLINE_S)
            sink.wait_for(4)
    finally:
        publisher.close()
    assert sink.features() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    assert sink.labels() == [1.0, None, None, None]
    assert sink.samples[0].at == 1700000000.5
    assert sink.samples[1].at > 1700000000.5  # arrival time where the payload gives none
    assert {s.stream for s in sink.samples} == {"s"}
    assert collector.rejected == 4
    assert collector.dropped == 0


def test_mqtt_messages_beyond_the_queue_are_dropped_and_counted(mosquitto: Any) -> None:
    release = threading.Event()
    sink = Sink()

    def slow_emit(batch: Sequence[Sample]) -> None:
        release.wait(DEADLINE_S)
        sink(batch)

    broker = mosquitto
    topic = f"sensors-{uuid.uuid4().hex[:8]}"
    config = MqttCollectorConfig(url=broker.url, topic=topic, name="slow")
    collector = MqttCollector(config, max_queued=2)
    publisher = connect_mqtt(broker.url, client_id="test-collectors-flood")
    try:
        with running(collector, slow_emit):
            assert collector.ready.wait(DEADLINE_S)
            for i in range(8):
                publisher.publish(topic, json.dumps({"features": [i]}).encode()).wait()
            wait_until(lambda: collector.dropped > 0)
            release.set()
            wait_until(lambda: len(sink.samples) + collector.dropped == 8)
    finally:
        publisher.close()
    kept = [f[0] for f in sink.features()]
    assert kept == sorted(kept)  # the oldest are kept, in order
    assert kept[0] == 0.0
