"""Subscribe to sensors publishing on a broker on the device itself.

Payloads are JSON, an object `{"features": [...], "label": 1.0, "at": 1700000000.0}` (label and
at optional; other keys ignored) or a list of such objects, or CSV: one sample per line, every
value a feature, no label. The MQTT thread only queues what arrives; `run` parses and emits in
batches, so a slow buffer never stalls the connection. The queue is bounded: when it is full
the newest messages are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any

from bus.errors import ConnectError, ValidationError
from bus.mqtt import MqttClient, MqttMessage, MqttOptions, connect_mqtt
from bus.mqtt.message import check_topic_filter
from edge_agent.buffer import Sample
from edge_agent.collectors.base import MAX_BATCH, Emit, check_name
from edge_agent.collectors.parse import Tally, features, make_sample, number
from edge_agent.config import MqttCollectorConfig

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # messages waiting for `run`; beyond this the newest are dropped
RECONNECT_MAX_S = 30.0
CONNECT_TIMEOUT_S = 5.0


class MqttCollector:
    def __init__(self, config: MqttCollectorConfig, *, max_queued: int = MAX_QUEUED) -> None:
        self.config = config
        self.name = check_name(config.name)
        self.client_id = f"fleetlearn-collector-{config.name}-{os.getpid()}"
        # Checked now, so a bad URL or filter fails when the agent starts, not in a thread.
        MqttOptions.from_url(config.url, client_id=self.client_id)
        check_topic_filter(config.topic)
        self.ready = threading.Event()  # set once subscribed: messages from then on arrive
        self._queue: queue.Queue[tuple[bytes, float, str]] = queue.Queue(max_queued)
        self._rejects = Tally(log, "collector rejected a payload", config.name)
        self._drops = Tally(log, "collector queue full; message dropped", config.name)

    @property
    def rejected(self) -> int:
        """Payloads (or items of a list payload) that were not valid samples."""
        return self._rejects.count

    @property
    def dropped(self) -> int:
        """Messages dropped because `emit` fell behind and the queue was full."""
        return self._drops.count

    def run(self, emit: Emit, stop: threading.Event) -> None:
        client = self._connect(stop)
        if client is None:
            return
        try:
            while not stop.is_set():
                self._emit(self._take(timeout=0.1), emit)
        finally:
            client.close()
            self.ready.clear()
        while batch := self._take(timeout=0):  # what arrived before the close
            self._emit(batch, emit)

    def _connect(self, stop: threading.Event) -> MqttClient | None:
        """Connect and subscribe; the local broker may start after us, so retry until stop."""
        delay = 1.0
        while not stop.is_set():
            try:
                client = connect_mqtt(
                    self.config.url,
                    client_id=self.client_id,
                    timeout=CONNECT_TIMEOUT_S,
                    subscriptions={self.config.topic: self._on_message},
                )
            except ConnectError as exc:
                log.warning(
                    "collector cannot reach its broker",
                    extra={"collector": self.name, "error": str(exc), "retry_s": delay},
                )
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.ready.set()
            log.info(
                "collector subscribed", extra={"collector": self.name, "topic": self.config.topic}
            )
            return client
        return None

    def _on_message(self, message: MqttMessage) -> None:
        """On the MQTT thread: queue and return at once."""
        try:
            self._queue.put_nowait((message.payload, time.time(), message.topic))
        except queue.Full:
            self._drops.add(message.topic, f"{self._queue.maxsize} messages already waiting")

    def _take(self, timeout: float) -> list[Sample]:
        """Samples of the queued messages, up to about one batch; waits `timeout` for the first."""
        samples: list[Sample] = []
        block = timeout > 0
        while len(samples) < MAX_BATCH:
            try:
                payload, at, topic = self._queue.get(block=block, timeout=timeout or None)
            except queue.Empty:
                break
            block = False
            samples.extend(self.parse(payload, at=at, topic=topic))
        return samples

    @staticmethod
    def _emit(samples: list[Sample], emit: Emit) -> None:
        for start in range(0, len(samples), MAX_BATCH):
            emit(samples[start : start + MAX_BATCH])

    def parse(self, payload: bytes, *, at: float, topic: str = "") -> list[Sample]:
        """The valid samples of one payload; each invalid one is counted and logged."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._rejects.add(topic, f"not UTF-8: {exc}")
            return []
        if self.config.format == "csv":
            return self._csv_samples(text, at, topic)
        try:
            record = json.loads(text)
        except ValueError as exc:
            self._rejects.add(topic, f"invalid JSON: {exc}")
            return []
        records = record if isinstance(record, list) else [record]
        samples = []
        for i, item in enumerate(records):
            where = f"{topic} payload[{i}]" if isinstance(record, list) else topic
            try:
                samples.append(self._json_sample(item, at))
            except ValidationError as exc:
                self._rejects.add(where, str(exc))
        return samples

    def _json_sample(self, item: Any, at: float) -> Sample:
        if not isinstance(item, dict):
            raise ValidationError(f"expected a JSON object, got {type(item).__name__}")
        values = item.get("features")
        if not isinstance(values, list):
            raise ValidationError("expected a list of numbers", where="features")
        checked = features(values, [f"features[{i}]" for i in range(len(values))])
        label = item.get("label")
        if label is not None:
            label = number(label, "label")
        if item.get("at") is not None:
            at = number(item["at"], "at")
            if at <= 0:
                raise ValidationError(
                    f"must be a positive unix time, got {item['at']!r}", where="at"
                )
        return make_sample(checked, label, at=at, stream=self.config.stream)

    def _csv_samples(self, text: str, at: float, topic: str) -> list[Sample]:
        samples = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            cells = [c.strip() for c in line.split(",")]
            try:
                checked = features(cells, [f"column {i + 1}" for i in range(len(cells))])
            except ValidationError as exc:
                self._rejects.add(f"{topic} line {n}", str(exc))
                continue
            samples.append(make_sample(checked, None, at=at, stream=self.config.stream))
        return samples
