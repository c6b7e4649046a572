"""The durable log's interface: topics of partitions, keyed records, consumer groups, offsets.

Offsets follow Kafka's convention: a committed offset is the *next* record to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bus.errors import LogError

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None


@dataclass(frozen=True)
class DeliveryReport:
    """Where a record landed, or why it did not."""

    topic: str
    partition: int | None
    offset: int | None
    error: LogError | None = None


OnDelivery = Callable[[DeliveryReport], None]


class Producer(Protocol):
    """Writes records; delivery callbacks run inside `poll` and `flush`, on the caller's thread."""

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        on_delivery: OnDelivery | None = None,
    ) -> None: ...

    def poll(self, timeout: float = 0.0) -> int: ...

    def flush(self, timeout: float = 30.0) -> int: ...

    def close(self) -> None: ...


class Consumer(Protocol):
    """Reads records of a group (`subscribe`) or of given partitions (`assign`)."""

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def poll(self, timeout: float = 1.0) -> Record | None: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def committed(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def close(self) -> None: ...


class Log(Protocol):
    """A log backend: topics, and factories for producers and consumers."""

    def create_topics(self, topics: Mapping[str, int]) -> None: ...

    def partitions(self, topic: str) -> int: ...

    def end_offsets(self, topic: str) -> dict[int, int]: ...

    def producer(self) -> Producer: ...

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> Consumer: ...

    def close(self) -> None: ...


def consume(consumer: Consumer, max_records: int, timeout: float) -> list[Record]:
    """Up to `max_records` records, waiting at most `timeout` seconds in total."""
    import time

    deadline = time.monotonic() + timeout
    records: list[Record] = []
    while len(records) < max_records:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        record = consumer.poll(min(remaining, 0.5))
        if record is not None:
            records.append(record)
    return records
