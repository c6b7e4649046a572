"""`kafka://host:port[,host:port]`: the log on Apache Kafka through confluent-kafka.

confluent-kafka lives only here; its errors become `LogError` naming the topic and partition.
Producers are idempotent (acks=all) and partition keys with murmur2 like the embedded log;
consumers never auto-commit: offsets move only when the caller commits what it has processed.
Topics get `KafkaOptions.replication_factor` replicas: by default the brokers' own
`default.replication.factor`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bus.errors import LogError
from bus.log.base import (
    DeliveryReport,
    Headers,
    OnDelivery,
    Record,
    TopicPartition,
    check_reset,
)
from bus.log.kafka_config import KafkaOptions, MskIamToken, kafka_config, parse_kafka_url

__all__ = ["KafkaConsumer", "KafkaLog", "KafkaOptions", "KafkaProducer"]

C = TypeVar("C")


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return f"{error.str()} ({error.name()})"
    return str(exc)


def _retriable(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (
        error.retriable()
        or error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    )


def _client(make: Callable[[dict[str, Any]], C], config: dict[str, Any], what: str) -> C:
    """A confluent-kafka client; one that cannot start (no IAM token in time) is a LogError."""
    try:
        return make(config)
    except KafkaException as exc:
        reason = _reason(exc)
        token = config.get("oauth_cb")
        if isinstance(token, MskIamToken) and token.last_error:
            reason = f"{reason}: {token.last_error}"
        raise LogError(f"{what} for {config['bootstrap.servers']}: {reason}") from exc


class KafkaLog:
    """Topic administration on one cluster, and the factory of its producers and consumers."""

    def __init__(self, bootstrap: str, options: KafkaOptions | None = None) -> None:
        self.bootstrap = bootstrap
        self.options = options or KafkaOptions()
        self._admin = _client(
            AdminClient, kafka_config(bootstrap, self.options, "admin"), "Kafka admin client"
        )
        self._watermarks: Consumer | None = None  # one reader for every end_offsets call
        self._watermarks_lock = threading.Lock()

    @property
    def max_message_bytes(self) -> int:
        return self.options.message_max_bytes

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> KafkaLog:
        bootstrap, options = parse_kafka_url(url, overrides)
        return cls(bootstrap, options)

    def create_topics(self, topics: Mapping[str, int]) -> None:
        """Create missing topics with `options.replication_factor` replicas (-1: the brokers'
        `default.replication.factor`); a broker that cannot place them refuses, and that is a
        LogError naming the factor asked for."""
        timeout = self.options.timeout_s
        replication = self.options.replication_factor
        futures = self._admin.create_topics(
            [
                NewTopic(name, num_partitions=n, replication_factor=replication)
                for name, n in topics.items()
            ],
            operation_timeout=timeout,
        )
        asked = "the brokers' default" if replication == -1 else str(replication)
        for name, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    not isinstance(error, KafkaError)
                    or error.code() != KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise LogError(
                        f"create topic {name!r} (replication factor {asked}) on "
                        f"{self.bootstrap}: {_reason(exc)}"
                    ) from exc
        deadline = time.monotonic() + timeout
        for name in topics:  # metadata lags creation; wait until the brokers agree
            while self._partition_count(name) == 0:
                if time.monotonic() > deadline:
                    raise LogError(
                        f"topic {name!r} not visible on {self.bootstrap} after {timeout} s"
                    )
                time.sleep(0.1)

    def _partition_count(self, topic: str) -> int:
        try:
            metadata = self._admin.list_topics(topic, timeout=self.options.timeout_s)
        except KafkaException as exc:
            raise LogError(
                f"metadata of topic {topic!r} from {self.bootstrap}: {_reason(exc)}"
            ) from exc
        found = metadata.topics.get(topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def partitions(self, topic: str) -> int:
        count = self._partition_count(topic)
        if count == 0:
            raise LogError(f"unknown topic {topic!r} on {self.bootstrap}")
        return count

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._watermarks_lock:
            if self._watermarks is None:
                config = kafka_config(
                    self.bootstrap, self.options, "consumer", group_id="fleetlearn-watermarks"
                )
                self._watermarks = _client(Consumer, config, "Kafka consumer")
            return self._end_offsets(self._watermarks, topic)

    def _end_offsets(self, reader: Consumer, topic: str) -> dict[int, int]:
        deadline = time.monotonic() + self.options.timeout_s
        ends: dict[int, int] = {}
        for p in range(self.partitions(topic)):
            while True:
                try:
                    _, high = reader.get_watermark_offsets(
                        KafkaTopicPartition(topic, p), timeout=self.options.timeout_s
                    )
                    break
                except KafkaException as exc:
                    # Just after a topic is created its leader may not be known yet
                    # (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE): asked again, it is.
                    if _retriable(exc) and time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    raise LogError(
                        f"end offset of {topic}[{p}] on {self.bootstrap}: {_reason(exc)}"
                    ) from exc
            ends[p] = int(high)
        return ends

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self.bootstrap, self.options)

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> KafkaConsumer:
        return KafkaConsumer(
            self.bootstrap, self.options, group_id, check_reset(group_id, auto_offset_reset)
        )

    def close(self) -> None:
        """The admin client holds no connection that needs closing; the watermark reader does."""
        with self._watermarks_lock:
            if self._watermarks is not None:
                self._watermarks.close()
                self._watermarks = None


class KafkaProducer:
    """An idempotent producer; callbacks are served by `poll` and `flush` like the embedded log."""

    def __init__(self, bootstrap: str, options: KafkaOptions) -> None:
        self._timeout = options.timeout_s
        config = kafka_config(bootstrap, options, "producer")
        self._producer = _client(Producer, config, "Kafka producer")
        self._closed = False

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        if self._closed:
            raise LogError(f"produce to {topic!r} on a closed producer")
        kwargs: dict[str, Any] = {
            "key": key,
            "headers": list(headers),
            "on_delivery": _reporter(on_delivery),
        }
        if partition is not None:
            kwargs["partition"] = partition
        where = topic if partition is None else f"{topic}[{partition}]"
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError as exc:  # the local queue is full: serve callbacks to drain it
                if time.monotonic() > deadline:
                    raise LogError(
                        f"produce to {where}: the local queue stayed full for {self._timeout} s"
                    ) from exc
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise LogError(f"produce to {where}: {_reason(exc)}") from exc

    def poll(self, timeout: float = 0.0) -> int:
        if self._closed:
            raise LogError("poll on a closed producer")
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        if self._closed:
            raise LogError("flush on a closed producer")
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        """Deliver what is queued; records that cannot be delivered in time are an error."""
        if self._closed:
            return
        self._closed = True
        pending = int(self._producer.flush(self._timeout))
        if pending:
            raise LogError(
                f"producer closed with {pending} record(s) undelivered after {self._timeout} s"
            )


def _reporter(on_delivery: OnDelivery | None) -> Any:
    if on_delivery is None:
        return None

    def report(error: KafkaError | None, message: Any) -> None:
        topic, partition = message.topic(), message.partition()
        if error is not None:
            failure = LogError(
                f"delivery to {topic}[{partition}] failed: {error.str()} ({error.name()})"
            )
            on_delivery(DeliveryReport(topic, partition, None, failure))
        else:
            on_delivery(DeliveryReport(topic, partition, message.offset()))

    return report


class KafkaConsumer:
    """A group member (`subscribe`) or owner of named partitions (`assign`); explicit commits."""

    def __init__(self, bootstrap: str, options: KafkaOptions, group_id: str, reset: str) -> None:
        self.group_id = group_id
        self._timeout = options.timeout_s
        config = kafka_config(
            bootstrap, options, "consumer", group_id=group_id, auto_offset_reset=reset
        )
        self._consumer = _client(Consumer, config, f"Kafka consumer of group {group_id!r}")
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"consumer of group {self.group_id!r} is closed")

    def _error(self, what: str, exc: KafkaException) -> LogError:
        return LogError(f"{what} (group {self.group_id!r}): {_reason(exc)}")

    def subscribe(self, topics: Sequence[str]) -> None:
        self._check_open()
        try:
            self._consumer.subscribe(list(topics))
        except KafkaException as exc:
            raise self._error(f"subscribe to {list(topics)}", exc) from exc

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        self._check_open()
        targets = [
            KafkaTopicPartition(t, p, OFFSET_STORED if o is None else o) for t, p, o in partitions
        ]
        try:
            self._consumer.assign(targets)
        except KafkaException as exc:
            raise self._error(f"assign {[(t, p) for t, p, _ in partitions]}", exc) from exc

    def assignment(self) -> list[TopicPartition]:
        self._check_open()
        return sorted(TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    def poll(self, timeout: float = 1.0) -> Record | None:
        self._check_open()
        message: Any = self._consumer.poll(timeout)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return None
            where = f"{message.topic()}[{message.partition()}]"
            raise LogError(
                f"consume from {where} (group {self.group_id!r}): {error.str()} ({error.name()})"
            )
        headers = tuple((name, bytes(value or b"")) for name, value in message.headers() or [])
        return Record(
            message.topic(),
            message.partition(),
            message.offset(),
            message.key(),
            message.value() or b"",
            headers,
            message.timestamp()[1],
        )

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        if not offsets:
            return
        targets = [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        try:
            results = self._consumer.commit(offsets=targets, asynchronous=False) or []
        except KafkaException as exc:
            raise self._error(f"commit {dict(offsets)}", exc) from exc
        for result in results:
            if result.error is not None:
                where = f"{result.topic}[{result.partition}]"
                raise LogError(f"commit {where} (group {self.group_id!r}): {result.error.str()}")

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        asked = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        try:
            found = self._consumer.committed(asked, timeout=self._timeout)
        except KafkaException as exc:
            raise self._error("committed offsets", exc) from exc
        return {
            TopicPartition(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in found
        }

    def position(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        asked = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        try:
            found = self._consumer.position(asked)
        except KafkaException as exc:
            raise self._error("positions", exc) from exc
        return {
            TopicPartition(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in found
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_open()
        try:
            self._consumer.seek(KafkaTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            raise self._error(f"seek {tp.topic}[{tp.partition}] to {offset}", exc) from exc

    def close(self) -> None:
        """Leave the group at once, so its partitions move to the other members now."""
        if not self._closed:
            self._closed = True
            try:
                self._consumer.close()
            except KafkaException as exc:
                raise self._error("close", exc) from exc
