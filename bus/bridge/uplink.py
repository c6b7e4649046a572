"""MQTT → log: validate, route, claim-check, and acknowledge only what the log confirmed.

Runs inside the bridge's single thread: `on_message` is called from the MQTT loop and
delivery reports from the producer's poll, so acks never race each other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from bus.bridge.acks import OrderedAcks
from bus.bridge.config import BridgeConfig
from bus.bridge.metrics import BridgeMetrics
from bus.errors import FleetlearnError, ValidationError
from bus.log import DeliveryReport, Producer
from bus.mqtt import MqttMessage
from bus.protocol import (
    AnyEnvelope,
    DataBatch,
    ModelUpdate,
    Status,
    peek_header,
)
from bus.store import ObjectStore
from bus.store.claims import put_claim
from bus.topics import DeviceChannel, parse_device_topic

log = logging.getLogger(__name__)

EXPECTED_KIND: dict[DeviceChannel, type[AnyEnvelope]] = {
    DeviceChannel.UPDATE: ModelUpdate,
    DeviceChannel.DATA: DataBatch,
    DeviceChannel.STATUS: Status,
}
ERROR_HEADER = "fleetlearn-error"


@dataclass(frozen=True)
class _Route:
    """What one MQTT topic means for the log: parsed, checked and looked up once."""

    device_id: str
    channel: DeviceChannel
    target: str
    key: bytes
    topic_bytes: bytes
    received: Any
    forwarded: Any


class Uplink:
    def __init__(
        self,
        config: BridgeConfig,
        prefix: str,
        producer: Producer,
        metrics: BridgeMetrics,
        store: ObjectStore | None = None,
    ) -> None:
        self.config = config
        self.prefix = prefix
        self.producer = producer
        self.metrics = metrics
        self.store = store
        self.acks = OrderedAcks()
        # Per-topic work done once: a fleet's topics repeat with every message.
        self._routes: dict[str, _Route] = {}

    @property
    def full(self) -> bool:
        return len(self.acks) >= self.config.max_inflight

    def on_message(self, message: MqttMessage) -> None:
        entry = self.acks.add(message.ack, time.time())
        try:
            route = self._route(message.topic)
            route.received.inc()
            header = self._validate(message, route.device_id, route.channel)
            value = self._claim_check(message.payload, header, route.device_id)
        except FleetlearnError as exc:  # protocol, topic and store errors alike
            self._dead_letter(message, exc, entry)
            return
        headers = [
            ("mqtt-topic", route.topic_bytes),
            ("fleetlearn-id", header.id.encode()),
            ("received-at-ms", str(int(entry.received_at * 1000)).encode()),
        ]
        self._produce(route.target, value, route.key, headers, entry, header.created_at, route)

    def _route(self, topic: str) -> _Route:
        route = self._routes.get(topic)
        if route is None:
            device_id, channel = parse_device_topic(self.prefix, topic)  # raises on a bad topic
            if len(self._routes) >= 100_000:
                self._routes.clear()
            route = self._routes[topic] = _Route(
                device_id=device_id,
                channel=channel,
                target=getattr(self.config.topics, channel.value),
                key=device_id.encode(),
                topic_bytes=topic.encode(),
                received=self.metrics.received.labels(channel.value),
                forwarded=self.metrics.forwarded.labels(channel.value),
            )
        return route

    def _validate(
        self, message: MqttMessage, device_id: str, channel: DeviceChannel
    ) -> AnyEnvelope:
        header = peek_header(message.payload)
        if not isinstance(header, EXPECTED_KIND[channel]):
            raise ValidationError(
                f"a {header.kind.value} message on the {channel.value} topic", where="header.kind"
            )
        if getattr(header, "device_id", None) != device_id:
            raise ValidationError(
                f"{getattr(header, 'device_id', None)!r} differs from the topic's {device_id!r}",
                where="header.device_id",
            )
        return header

    def _claim_check(self, payload: bytes, header: AnyEnvelope, device_id: str) -> bytes:
        """Payloads over the record limit go to the store; the record carries a reference."""
        if len(payload) <= self.config.max_record_bytes:
            return payload
        if self.store is None:
            raise ValidationError(
                f"{len(payload)} bytes exceed max_record_bytes {self.config.max_record_bytes} "
                "and no store_url is configured",
                where="payload",
            )
        return put_claim(self.store, payload, header, device_id)

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]],
        entry: Any,
        created_at: float | None,
        route: _Route | None,
    ) -> None:
        def delivered(report: DeliveryReport) -> None:
            if report.error is not None:  # given up by the producer: write it again, never ack
                log.warning(
                    "log write failed, retrying", extra={"topic": topic, "error": str(report.error)}
                )
                self._produce(topic, value, key, headers, entry, created_at, route)
                return
            if route is not None:
                route.forwarded.inc()
            if created_at is not None:
                self.metrics.latency.observe(max(0.0, time.time() - created_at))
            self.acks.confirm(entry)

        self.producer.produce(topic, value, key=key, headers=headers, on_delivery=delivered)

    def _dead_letter(self, message: MqttMessage, exc: Exception, entry: Any) -> None:
        reason = str(exc)
        where = getattr(exc, "where", None) or "message"
        self.metrics.rejected.labels(where.split(".")[0]).inc()
        log.warning("dead letter", extra={"topic": message.topic, "reason": reason})
        headers = [("mqtt-topic", message.topic.encode()), (ERROR_HEADER, reason.encode()[:4096])]
        value = message.payload if len(message.payload) <= self.config.max_record_bytes else b""
        self._produce(
            self.config.topics.dlq, value, message.topic.encode(), headers, entry, None, None
        )
