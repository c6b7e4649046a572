"""Log → MQTT: round announcements and release manifests, published retained.

Retained, so a device that connects later still gets the current round and model. An offset
is committed only after the broker acknowledged the publish; several bridges share one
consumer group, so each record is published once.
"""

from __future__ import annotations

import logging
from collections import deque

from bus.bridge.metrics import BridgeMetrics
from bus.errors import ProtocolError
from bus.log import Consumer, Record
from bus.mqtt import MqttClient, PublishHandle
from bus.protocol import ReleaseManifest, RoundAnnouncement, peek_header
from bus.topics import release_topic, rounds_topic

log = logging.getLogger(__name__)
GROUP = "fleetlearn-bridge-downlink"


class Downlink:
    def __init__(
        self, consumer: Consumer, mqtt: MqttClient, prefix: str, metrics: BridgeMetrics
    ) -> None:
        self.consumer = consumer
        self.mqtt = mqtt
        self.prefix = prefix
        self.metrics = metrics
        self._pending: deque[tuple[Record, PublishHandle | None]] = deque()

    def step(self) -> None:
        if len(self._pending) < 100:
            record = self.consumer.poll(0)
            if record is not None:
                self._pending.append((record, self._publish(record)))
        self._commit_acknowledged()

    def _publish(self, record: Record) -> PublishHandle | None:
        try:
            header = peek_header(record.value)
        except ProtocolError as exc:  # cloud-side bug: skip it, loudly; devices never see it
            log.error(
                "invalid downlink record",
                extra={"topic": record.topic, "offset": record.offset, "reason": str(exc)},
            )
            return None
        if isinstance(header, RoundAnnouncement):
            topic = rounds_topic(self.prefix)
        elif isinstance(header, ReleaseManifest):
            topic = release_topic(self.prefix, header.model)
        else:
            log.error(
                "unexpected downlink kind", extra={"topic": record.topic, "kind": header.kind.value}
            )
            return None
        self.metrics.downlinked.labels(header.kind.value).inc()
        return self.mqtt.publish(topic, record.value, qos=1, retain=True)

    def _commit_acknowledged(self) -> None:
        last: Record | None = None
        while self._pending:
            record, handle = self._pending[0]
            if handle is not None and not handle.acknowledged:
                break
            self._pending.popleft()
            last = record
        if last is not None:
            self.consumer.commit({last.tp: last.offset + 1})
