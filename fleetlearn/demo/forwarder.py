"""MQTT to log for model updates, acknowledging MQTT only after the log confirmed the write.

The demo's stand-in for the bridge: one thread runs the MQTT loop and the log producer's
poll in turn, so a delivery report and the MQTT ack it releases happen on the same thread.
"""

from __future__ import annotations

import logging
import threading

from bus.errors import ProtocolError, ValidationError
from bus.log import DeliveryReport, Log
from bus.mqtt import MqttClient, MqttMessage, MqttOptions
from bus.protocol import peek_header
from bus.topics import KAFKA_UPDATES, DeviceChannel, device_filter, parse_device_topic

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, mqtt_url: str, log_backend: Log, prefix: str, *, client_id: str) -> None:
        self.prefix = prefix
        self.forwarded = 0
        self.rejected: list[str] = []
        self._producer = log_backend.producer()
        options = MqttOptions.from_url(mqtt_url, client_id=client_id, manual_ack=True)
        self._client = MqttClient(options, threaded=False)
        self._client.subscribe(device_filter(prefix, DeviceChannel.UPDATE), self._on_message)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    def start(self) -> None:
        self._client.connect()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._client.loop(0.02)
            self._producer.poll(0)

    def _on_message(self, message: MqttMessage) -> None:
        try:
            device_id, _ = parse_device_topic(self.prefix, message.topic)
            header = peek_header(message.payload)
            if getattr(header, "device_id", None) != device_id:
                raise ValidationError(
                    f"differs from the topic's {device_id!r}", where="header.device_id"
                )
        except ProtocolError as exc:
            # Acked and dropped here; the bridge sends these to the dead-letter topic instead.
            self.rejected.append(f"{message.topic}: {exc}")
            log.warning("rejected update", extra={"topic": message.topic, "reason": str(exc)})
            message.ack()
            return
        self._producer.produce(
            KAFKA_UPDATES,
            message.payload,
            key=device_id.encode(),
            headers=[("fleetlearn-id", header.id.encode())],
            on_delivery=lambda report: self._delivered(report, message),
        )

    def _delivered(self, report: DeliveryReport, message: MqttMessage) -> None:
        if report.error is not None:  # not acked: the broker redelivers after a reconnect
            log.error(
                "log write failed", extra={"topic": message.topic, "error": str(report.error)}
            )
            return
        message.ack()
        self.forwarded += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._producer.flush(10)
        self._producer.close()
        self._client.close()
