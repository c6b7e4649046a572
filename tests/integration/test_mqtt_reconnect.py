"""A client outlives its broker: it reconnects with backoff; what it published meanwhile arrives."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.mqtt import MqttClient, MqttMessage, connect_mqtt
from fleetlearn.services.mosquitto import MosquittoService

pytestmark = pytest.mark.integration


def _eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _pump(client: MqttClient, stop: threading.Event) -> threading.Thread:
    """Drive a caller-driven client's loop as the bridge does, from one thread of its own."""

    def run() -> None:
        while not stop.is_set():
            client.loop(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("threaded", [True, False], ids=["loop-thread", "caller-driven"])
def test_reconnects_after_a_broker_crash(tmp_path: Path, threaded: bool) -> None:
    broker = MosquittoService(tmp_path / "broker")
    broker.start()
    topic = f"t-{uuid.uuid4().hex[:8]}/rounds/current"
    stop = threading.Event()
    device = connect_mqtt(
        f"{broker.url}?keepalive=2", client_id="device", threaded=threaded, reconnect_max_s=1.0
    )
    pump = None if threaded else _pump(device, stop)
    try:
        broker.kill()
        assert _eventually(lambda: not device.connected, 10)
        # Retained, so a subscriber that comes later can prove the broker got it.
        handle = device.publish(topic, b"sent while the broker was down", retain=True)
        assert not handle.acknowledged
        broker.start()  # same port and data directory
        assert _eventually(lambda: device.connected, 20)
        assert _eventually(lambda: handle.acknowledged, 20)
        received: list[bytes] = []

        def keep(message: MqttMessage) -> None:
            received.append(message.payload)

        late = connect_mqtt(broker.url, client_id="late", subscriptions={topic: keep})
        assert _eventually(lambda: received == [b"sent while the broker was down"], 10)
        late.close()
    finally:
        stop.set()
        if pump is not None:
            pump.join(5)
        device.close()
        broker.stop()


def test_unacked_message_is_redelivered_on_the_next_connection(tmp_path: Path) -> None:
    """What the bridge relies on when its connection drops with acks outstanding."""
    broker = MosquittoService(tmp_path / "broker")
    broker.start()
    topic = f"t-{uuid.uuid4().hex[:8]}/update"
    got: list[MqttMessage] = []
    consumer = connect_mqtt(
        broker.url,
        client_id="bridge-like",
        manual_ack=True,
        reconnect_max_s=1.0,
        subscriptions={topic: got.append},
    )
    try:
        publisher = connect_mqtt(broker.url, client_id="publisher")
        publisher.publish(topic, b"one").wait(10)
        publisher.close()
        assert _eventually(lambda: len(got) == 1, 10)
        broker.stop()  # a clean stop saves the session with its unacked message
        broker.start()
        assert _eventually(lambda: len(got) == 2, 20)  # redelivered on the new connection
        assert got[1].payload == b"one"
        assert got[1].duplicate
        got[0].ack()  # taken on the old connection: dropped, not sent under a stale packet id
        got[1].ack()
        assert _eventually(lambda: consumer.connected, 10)
        time.sleep(0.5)  # let the PUBACK reach the broker
        broker.stop()
        broker.start()
        assert _eventually(lambda: consumer.connected, 20)
        time.sleep(1.0)
        assert len(got) == 2  # acknowledged once on the live connection: not delivered again
    finally:
        consumer.close()
        broker.stop()
