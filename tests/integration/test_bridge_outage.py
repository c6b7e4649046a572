"""Kafka stopped under a running bridge: in-flight stays bounded, messages wait in the broker's
session, and everything arrives when Kafka is back.

The bridge gets a Kafka of its own (a local process on a free port), because stopping the
session-wide one would disturb every other test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.bridge.bridge import Bridge
from bus.log import open_log
from fleetlearn.services.kafka import KafkaService
from tests.conftest import start_service
from tests.integration.bridge_helpers import bridge_config, publish_all, read_ids

pytestmark = pytest.mark.integration
MAX_INFLIGHT = 64


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaService]:
    service = start_service("kafka", KafkaService(tmp_path / "kafka"))
    yield service
    service.stop()


def test_kafka_outage_bounds_memory_and_loses_nothing(mosquitto: Any, own_kafka: Any) -> None:
    config = bridge_config(mosquitto, own_kafka, downlink=False, max_inflight=MAX_INFLIGHT)
    # A short delivery timeout makes the producer give up during the outage, so the bridge's
    # write-again path runs too.
    config = config.model_copy(update={"log_url": f"{own_kafka.url}?delivery_timeout_ms=3000"})
    bridge = Bridge(config).start()
    stop = threading.Event()
    runner = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    runner.start()
    peak = 0

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(bridge.uplink.acks))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        own_kafka.stop()
        # The broker acknowledges every publish: the messages wait in the bridge's session.
        sent = publish_all(config.mqtt_url, bridge.prefix, config.fleet, devices=4, per_device=100)
        deadline = time.monotonic() + 20
        while len(bridge.uplink.acks) < MAX_INFLIGHT and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(bridge.uplink.acks) == MAX_INFLIGHT  # back-pressure engaged
        time.sleep(5)  # past the delivery timeout: failed writes are written again, not acked
        assert len(bridge.uplink.acks) == MAX_INFLIGHT
        own_kafka.start()  # same port, same data
        received = read_ids(open_log(own_kafka.url), config.topics.update, len(sent), 120)
    finally:
        stop.set()
        runner.join(10)
        sampler.join(5)
        bridge.close()
    assert set(received) == sent  # nothing lost
    assert peak <= MAX_INFLIGHT  # memory bounded by the in-flight limit, whatever the backlog
