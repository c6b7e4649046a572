"""The durable log chosen by URL: `kafka://host:port[,host:port]` or `sqlite:///path/log.db`.

Options come from the URL's query (`sqlite:///x.db?synchronous=NORMAL`) or as keywords, which
win; they are typed per backend (`bus.log.kafka_config.KafkaOptions`,
`bus.log.sqlite_db.SqliteOptions`), so a misspelt option fails here, naming the URL.
"""

from __future__ import annotations

from typing import Any

from bus.log.base import (
    Consumer,
    DeliveryReport,
    Log,
    Membership,
    Offsets,
    Positions,
    Producer,
    Reader,
    Record,
    TopicPartition,
    Topics,
    consume,
)
from bus.urls import parse_url

__all__ = [
    "Consumer",
    "DeliveryReport",
    "Log",
    "Membership",
    "Offsets",
    "Positions",
    "Producer",
    "Reader",
    "Record",
    "TopicPartition",
    "Topics",
    "consume",
    "open_log",
]


def open_log(url: str, **options: Any) -> Log:
    """Open the log at `url`; `options` are the backend's typed option names."""
    if isinstance(url, str) and url.lower().startswith("kafka://"):
        # confluent-kafka is imported only when Kafka is used: devices run without it.
        from bus.log.kafka import KafkaLog

        return KafkaLog.from_url(url, **options)
    parsed = parse_url(url, schemes=("kafka", "sqlite"))
    from bus.log.sqlite import SqliteLog

    return SqliteLog.from_url(parsed, **options)
