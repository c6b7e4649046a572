"""The durable log chosen by URL: `kafka://host:port[,host:port]` or `sqlite:///path/log.db`."""

from __future__ import annotations

from typing import Any

from bus.errors import ConfigError
from bus.log.base import (
    Consumer,
    DeliveryReport,
    Log,
    Producer,
    Record,
    TopicPartition,
    consume,
)
from bus.urls import local_path, parse_url

__all__ = [
    "Consumer",
    "DeliveryReport",
    "Log",
    "Producer",
    "Record",
    "TopicPartition",
    "consume",
    "open_log",
]


def open_log(url: str, **options: Any) -> Log:
    """Open the log at `url`. Kafka options are librdkafka keys (`security_protocol=...`)."""
    parsed = parse_url(url, schemes=("kafka", "sqlite"))
    if parsed.scheme == "sqlite":
        from bus.log.sqlite import SqliteLog

        return SqliteLog(local_path(parsed), **options)
    from bus.log.kafka import KafkaLog  # confluent-kafka is imported only when Kafka is used

    if not parsed.netloc:
        raise ConfigError(f"{parsed.safe}: no bootstrap servers given")
    return KafkaLog(parsed.netloc, **options)
