"""`kafka://host:port[,host:port]`: the log on Apache Kafka through confluent-kafka.

confluent-kafka lives only here; its errors become `LogError` naming the topic and partition.
Producers are idempotent (acks=all) and partition keys with murmur2 like the embedded log;
consumers never auto-commit: offsets move only when the caller commits what it has processed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

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
from bus.log.base import DeliveryReport, Headers, OnDelivery, Record, TopicPartition


def client_config(bootstrap: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings shared by every client; `options` adds security and tuning keys."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "fleetlearn"}
    config.update({key.replace("_", "."): value for key, value in options.items()})
    return config


class KafkaLog:
    def __init__(self, bootstrap: str, **options: Any) -> None:
        self.bootstrap = bootstrap
        self._options = options
        self._admin = AdminClient(client_config(bootstrap, options))

    def create_topics(
        self, topics: Mapping[str, int], *, replication: int = 1, timeout: float = 30.0
    ) -> None:
        futures = self._admin.create_topics(
            [
                NewTopic(name, num_partitions=count, replication_factor=replication)
                for name, count in topics.items()
            ],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise LogError(f"create topic {name!r} on {self.bootstrap}: {exc}") from exc
        deadline = time.monotonic() + timeout
        for name, count in topics.items():  # metadata lags creation; wait until brokers agree
            while self._partition_count(name) < count:
                if time.monotonic() > deadline:
                    raise LogError(
                        f"topic {name!r} not visible on {self.bootstrap} after {timeout} s"
                    )
                time.sleep(0.1)

    def _partition_count(self, topic: str) -> int:
        try:
            metadata = self._admin.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise LogError(f"metadata for {topic!r} from {self.bootstrap}: {exc}") from exc
        found = metadata.topics.get(topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def partitions(self, topic: str) -> int:
        count = self._partition_count(topic)
        if count == 0:
            raise LogError(f"unknown topic {topic!r} on {self.bootstrap}")
        return count

    def end_offsets(self, topic: str) -> dict[int, int]:
        reader = Consumer(
            client_config(self.bootstrap, {**self._options, "group.id": "fleetlearn-watermarks"})
        )
        try:
            return {
                p: int(reader.get_watermark_offsets(KafkaTopicPartition(topic, p), timeout=10)[1])
                for p in range(self.partitions(topic))
            }
        except KafkaException as exc:
            raise LogError(f"end offsets of {topic!r} on {self.bootstrap}: {exc}") from exc
        finally:
            reader.close()

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self.bootstrap, self._options)

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> KafkaConsumer:
        return KafkaConsumer(self.bootstrap, self._options, group_id, auto_offset_reset)

    def close(self) -> None:
        """The admin client holds no connection that needs closing."""


class KafkaProducer:
    def __init__(self, bootstrap: str, options: Mapping[str, Any]) -> None:
        config = client_config(bootstrap, options)
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",  # key -> partition as in the embedded log
                "linger.ms": 5,
            }
        )
        self._producer = Producer(config)
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
        for _ in range(100):  # the local queue is full: serve callbacks to drain it, bounded
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise LogError(f"produce to {topic!r}: {exc.args[0].str()}") from exc
        raise LogError(f"produce to {topic!r}: the local queue stayed full for 10 s")

    def poll(self, timeout: float = 0.0) -> int:
        if self._closed:
            raise LogError("poll on a closed producer")
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        if self._closed:
            raise LogError("flush on a closed producer")
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        if not self._closed:
            self._producer.flush(30)
            self._closed = True


def _reporter(on_delivery: OnDelivery | None) -> Any:
    if on_delivery is None:
        return None

    def report(error: KafkaError | None, message: Any) -> None:
        if error is not None:
            failure = LogError(
                f"delivery to {message.topic()}[{message.partition()}] failed: {error.str()}"
            )
            on_delivery(DeliveryReport(message.topic(), message.partition(), None, failure))
        else:
            on_delivery(DeliveryReport(message.topic(), message.partition(), message.offset()))

    return report


class KafkaConsumer:
    def __init__(
        self, bootstrap: str, options: Mapping[str, Any], group_id: str, reset: str
    ) -> None:
        config = client_config(bootstrap, options)
        config.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": reset,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "isolation.level": "read_committed",
            }
        )
        self.group_id = group_id
        self._consumer = Consumer(config)
        self._assigned: list[KafkaTopicPartition] | None = None
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"consumer of group {self.group_id!r} is closed")

    def subscribe(self, topics: Sequence[str]) -> None:
        self._check_open()
        self._consumer.subscribe(list(topics))

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        self._check_open()
        self._assigned = [
            KafkaTopicPartition(t, p, OFFSET_STORED if o is None else o) for t, p, o in partitions
        ]
        self._consumer.assign(self._assigned)

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
            raise LogError(f"consume from {message.topic()}[{message.partition()}]: {error.str()}")
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
        try:
            self._consumer.commit(
                offsets=[
                    KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()
                ],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise LogError(f"commit for group {self.group_id!r}: {exc.args[0].str()}") from exc

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        try:
            found = self._consumer.committed(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10
            )
        except KafkaException as exc:
            raise LogError(f"committed offsets for group {self.group_id!r}: {exc}") from exc
        return {
            TopicPartition(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in found
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_open()
        target = KafkaTopicPartition(tp.topic, tp.partition, offset)
        try:
            self._consumer.seek(target)
        except KafkaException as exc:
            # Right after assign() the partition is not fetching yet; re-assigning sets the start.
            if self._assigned is None:
                raise LogError(f"seek {tp.topic}[{tp.partition}] to {offset}: {exc}") from exc
            self._assigned = [
                target if (p.topic, p.partition) == (tp.topic, tp.partition) else p
                for p in self._assigned
            ]
            self._consumer.assign(self._assigned)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
