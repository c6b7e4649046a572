"""The bridge process: one thread turns the MQTT loop, the producer's poll and the downlink.

One thread keeps the bookkeeping simple and the acknowledgements ordered; FACTS.md measured
this shape at about 0.9 of the raw broker rate.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bus.bridge.config import BridgeConfig
from bus.bridge.downlink import GROUP, Downlink
from bus.bridge.metrics import BridgeMetrics
from bus.bridge.uplink import Uplink
from bus.errors import ConfigError
from bus.log import open_log
from bus.mqtt import MqttClient, MqttOptions
from bus.store import open_store
from bus.topics import DeviceChannel, default_prefix, device_filter

log = logging.getLogger(__name__)
UPLINK = (DeviceChannel.UPDATE, DeviceChannel.DATA, DeviceChannel.STATUS)


class Bridge:
    def __init__(self, config: BridgeConfig, metrics: BridgeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or BridgeMetrics()
        self.prefix = config.prefix or default_prefix(config.fleet)
        self.log = open_log(config.log_url, **_log_defaults(config))
        # The claim-check record, the dead letters and the headers must fit under the limit too.
        headroom = 96 * 1024  # a header may be 64 KiB; dead letters add 4 KiB of reason
        if config.max_record_bytes > self.log.max_message_bytes - headroom:
            raise ConfigError(
                f"max_record_bytes {config.max_record_bytes} must stay {headroom} bytes below "
                f"the log's message limit of {self.log.max_message_bytes}"
            )
        topics = config.topics
        self.log.create_topics(
            {
                topics.update: config.partitions,
                topics.data: config.partitions,
                topics.status: config.partitions,
                topics.dlq: 1,
                topics.rounds: 1,
                topics.releases: 1,
            }
        )
        self.producer = self.log.producer()
        store = open_store(config.store_url) if config.store_url else None
        self.uplink = Uplink(config, self.prefix, self.producer, self.metrics, store)
        options = MqttOptions.from_url(config.mqtt_url, client_id=config.client_id, manual_ack=True)
        self.mqtt = MqttClient(options, threaded=False)
        for channel in UPLINK:
            topic_filter = device_filter(self.prefix, channel, share_group=config.share_group)
            self.mqtt.subscribe(topic_filter, self.uplink.on_message)
        self.downlink: Downlink | None = None
        if config.downlink:
            consumer = self.log.consumer(GROUP)
            consumer.subscribe([topics.rounds, topics.releases])
            self.downlink = Downlink(consumer, self.mqtt, self.prefix, self.metrics)

    def start(self) -> Bridge:
        self.mqtt.connect()
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        log.info(
            "bridge started", extra={"client_id": self.config.client_id, "prefix": self.prefix}
        )
        return self

    def step(self) -> None:
        """One turn: read what MQTT has (up to the in-flight room), then serve Kafka's reports.

        While writes are outstanding the MQTT read does not block, and the producer's poll
        waits briefly instead, so a delivery report (which releases acks) is never stuck
        behind an idle socket. With nothing outstanding, the MQTT read blocks for new data.
        """
        room = self.config.max_inflight - len(self.uplink.acks)
        if room <= 0:  # back-pressure: leave messages in the broker's session
            self.producer.poll(0.05)
        else:
            waiting = len(self.uplink.acks) > 0
            got = self.mqtt.loop(0 if waiting else 0.01, max_messages=min(room, 256))
            self.producer.poll(0.001 if waiting and not got else 0)
        self.metrics.inflight.set(len(self.uplink.acks))
        if self.downlink is not None:
            self.downlink.step()

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.step()

    def close(self) -> None:
        self.producer.flush(30)
        for _ in range(100):  # serve the acks the flush released
            self.mqtt.loop(0.01)
        self.mqtt.close()
        if self.downlink is not None:
            self.downlink.consumer.close()
        self.producer.close()
        self.log.close()


def _log_defaults(config: BridgeConfig) -> dict[str, Any]:
    """Producer settings the bridge prefers unless the log URL says otherwise."""
    url = config.log_url
    if url.lower().startswith("kafka://") and "linger_ms=" not in url.partition("?")[2]:
        return {"linger_ms": config.kafka_linger_ms}
    return {}
