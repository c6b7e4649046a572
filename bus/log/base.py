"""The durable log's interface: topics of partitions, keyed records, consumer groups, offsets.

Offsets follow Kafka's convention: a committed offset or a position is the *next* record to
read. Each Protocol is small so a caller can ask for only what it uses (a DDP rank needs a
`Reader` and `Positions`, an aggregator a `Reader` and `Offsets`); `Consumer` is all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, get_type_hints

from bus.errors import ConfigError, LogError

if TYPE_CHECKING:
    from bus.urls import ParsedUrl

T = TypeVar("T")
Headers = Sequence[tuple[str, bytes]]

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""librdkafka's default `message.max.bytes`; the embedded log enforces the same limit."""


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True)
class Record:
    """One record as stored; headers keep their order and duplicates, as Kafka does."""

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
    """Where a record landed, or why it did not (then `offset` is None and `error` is set)."""

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

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        ...

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every outstanding delivery; returns how many are still pending."""
        ...

    def close(self) -> None: ...


class Reader(Protocol):
    """Hands out records one at a time."""

    def poll(self, timeout: float = 1.0) -> Record | None: ...

    def close(self) -> None: ...


class Membership(Protocol):
    """Which partitions a consumer reads: dealt by its group, or named by the caller."""

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        """Own exactly these (topic, partition, offset); None = committed or the reset policy."""
        ...

    def assignment(self) -> list[TopicPartition]: ...


class Positions(Protocol):
    """Where reading goes on: replay moves it back, `position` says where it is."""

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def position(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The next offset `poll` returns per partition; None until reading has started."""
        ...


class Offsets(Protocol):
    """The group's committed offsets, moved only by explicit, synchronous commits."""

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def committed(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]: ...


class Consumer(Reader, Membership, Positions, Offsets, Protocol):
    """A full consumer: every backend's consumer is one."""


class Topics(Protocol):
    """Topic administration."""

    def create_topics(self, topics: Mapping[str, int]) -> None:
        """Create topics with these partition counts; an existing topic is left as it is."""
        ...

    def partitions(self, topic: str) -> int: ...

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The high watermark (offset after the last record) of every partition."""
        ...


class Log(Topics, Protocol):
    """A log backend: topics, and factories for producers and consumers."""

    @property
    def max_message_bytes(self) -> int:
        """The largest record (value + key) a producer of this log accepts."""
        ...

    def producer(self) -> Producer: ...

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> Consumer: ...

    def close(self) -> None: ...


def consume(reader: Reader, max_records: int, timeout: float) -> list[Record]:
    """Up to `max_records` records, waiting at most `timeout` seconds in total."""
    deadline = time.monotonic() + timeout
    records: list[Record] = []
    while len(records) < max_records:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        record = reader.poll(min(remaining, 0.5))
        if record is not None:
            records.append(record)
    return records


def check_reset(group_id: str, auto_offset_reset: str) -> str:
    """The reset policies both backends understand, checked once."""
    if auto_offset_reset not in {"earliest", "latest"}:
        raise ConfigError(
            f"consumer group {group_id!r}: auto_offset_reset must be 'earliest' or 'latest', "
            f"got {auto_offset_reset!r}"
        )
    return auto_offset_reset


def options_from_url(cls: type[T], parsed: ParsedUrl, overrides: Mapping[str, Any]) -> T:
    """Build a backend's typed options from the URL's query, then keyword overrides on top.

    The query is text, so each field is converted by its declared type; a misspelt name or a
    bad value is a `ConfigError` naming the URL and the option, not a surprise later.
    """
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted((set(parsed.query) | set(overrides)) - known)
    if unknown:
        raise ConfigError(f"{parsed.safe}: unknown option(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name in parsed.query:
        kind = hints[name]
        if kind is int:
            values[name] = parsed.int_option(name, 0)
        elif kind is float:
            values[name] = parsed.float_option(name, 0.0)
        elif kind is bool:
            values[name] = parsed.bool_option(name, False)
        elif kind in (str, str | None):
            values[name] = parsed.option(name)
        else:
            raise ConfigError(f"{parsed.safe}: option {name!r} cannot be given in the URL")
    values.update(overrides)
    return cls(**values)
