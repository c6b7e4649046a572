"""One contract for every log backend: the embedded SQLite log and a real Apache Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bus.errors import LogError
from bus.log import Consumer, DeliveryReport, Log, Record, TopicPartition, consume, open_log
from bus.log.partition import partition_for

pytestmark = pytest.mark.integration

WAIT_S = 30.0


@pytest.fixture(params=["sqlite", "kafka"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/log.db"
    kafka: Any = request.getfixturevalue("kafka")
    return str(kafka.url)


@pytest.fixture
def log(log_url: str) -> Iterator[Log]:
    opened = open_log(log_url)
    yield opened
    opened.close()


@pytest.fixture
def topic(log: Log) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    log.create_topics({name: 3})
    return name


def produce_all(
    log: Log, topic: str, items: Sequence[tuple[bytes | None, bytes]]
) -> list[DeliveryReport]:
    """Produce `items`; reports come back in produce order (callbacks may run out of it)."""
    reports: dict[int, DeliveryReport] = {}

    def keep(index: int) -> Callable[[DeliveryReport], None]:
        return lambda report: reports.__setitem__(index, report)

    producer = log.producer()
    for index, (key, value) in enumerate(items):
        headers = [("id", value), ("id", b"dup")]
        producer.produce(topic, value, key=key, headers=headers, on_delivery=keep(index))
    assert producer.flush(WAIT_S) == 0
    producer.close()
    assert sorted(reports) == list(range(len(items)))
    assert all(r.error is None for r in reports.values()), [r.error for r in reports.values()]
    return [reports[i] for i in range(len(items))]


def read_all(log: Log, topic: str, group: str, count: int) -> list[Record]:
    consumer = log.consumer(group)
    consumer.subscribe([topic])
    records = consume(consumer, count, WAIT_S)
    consumer.close()
    return records


def poll_until(
    consumers: Sequence[Consumer], done: Callable[[], bool], seen: list[Record] | None = None
) -> None:
    """Poll every consumer in turn (group protocols progress only in poll) until `done`."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        for consumer in consumers:
            record = consumer.poll(0.1)
            if record is not None:
                assert seen is not None, f"unexpected record {record}"
                seen.append(record)


def test_round_trip_keys_headers_and_order(log: Log, topic: str) -> None:
    items = [(f"dev-{i % 4}".encode(), f"v{i}".encode()) for i in range(40)]
    reports = produce_all(log, topic, items)
    records = read_all(log, topic, "g1", 40)
    assert sorted(r.value for r in records) == sorted(v for _, v in items)
    by_key: dict[bytes | None, list[bytes]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record.value)
        assert record.headers == (("id", record.value), ("id", b"dup"))  # order and duplicates
        assert record.timestamp_ms > 0
    for key, values in by_key.items():
        assert values == [v for k, v in items if k == key]  # one key: one partition, in order
    assert {(r.partition, r.offset) for r in reports} == {(r.partition, r.offset) for r in records}


def test_delivery_reports_carry_dense_offsets(log: Log, topic: str) -> None:
    reports = produce_all(log, topic, [(f"k{i}".encode(), b"x") for i in range(30)])
    assert {r.topic for r in reports} == {topic}
    for partition in range(3):
        offsets = sorted(r.offset or 0 for r in reports if r.partition == partition)
        assert offsets == list(range(len(offsets)))


def test_key_to_partition_matches_kafka_default_partitioner(log: Log, topic: str) -> None:
    keys = [f"device-{i}".encode() for i in range(30)]
    reports = produce_all(log, topic, [(k, k) for k in keys])
    for key, report in zip(keys, reports, strict=True):
        assert report.partition == partition_for(key, 3), key
    again = produce_all(log, topic, [(k, k) for k in keys])
    assert [r.partition for r in again] == [r.partition for r in reports]


def test_commit_then_a_new_member_resumes_after_it(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", f"{i}".encode()) for i in range(10)])
    first = log.consumer("resume")
    first.subscribe([topic])
    records = consume(first, 4, WAIT_S)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3"]
    last = records[-1]
    first.commit({last.tp: last.offset + 1})
    first.close()
    second = log.consumer("resume")
    second.subscribe([topic])
    rest = consume(second, 6, WAIT_S)
    assert [r.value for r in rest] == [f"{i}".encode() for i in range(4, 10)]
    assert second.poll(1.0) is None  # nothing twice
    assert second.committed([last.tp]) == {last.tp: 4}
    second.close()


def test_latest_reset_skips_what_was_there(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", b"old")] * 3)
    tp = TopicPartition(topic, partition_for(b"k", 3))
    consumer = log.consumer(f"late-{uuid.uuid4().hex[:8]}", auto_offset_reset="latest")
    consumer.assign([(topic, tp.partition, None)])
    assert consumer.poll(1.0) is None
    produce_all(log, topic, [(b"k", b"new")] * 2)
    assert [(r.offset, r.value) for r in consume(consumer, 2, WAIT_S)] == [(3, b"new"), (4, b"new")]
    consumer.close()


def test_assign_without_offset_starts_at_the_committed_one(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", f"{i}".encode()) for i in range(6)])
    tp = TopicPartition(topic, partition_for(b"k", 3))
    committer = log.consumer("ranks")
    committer.assign([(topic, tp.partition, 0)])
    committer.commit({tp: 3})
    committer.close()
    rank = log.consumer("ranks")
    rank.assign([(topic, tp.partition, None)])
    assert [r.offset for r in consume(rank, 3, WAIT_S)] == [3, 4, 5]
    assert rank.position([tp]) == {tp: 6}
    rank.close()


def test_seek_replays_from_an_offset(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", f"{i}".encode()) for i in range(5)])
    tp = TopicPartition(topic, partition_for(b"k", 3))
    consumer = log.consumer("replay")
    consumer.assign([(topic, tp.partition, 0)])
    assert [r.value for r in consume(consumer, 5, WAIT_S)] == [b"0", b"1", b"2", b"3", b"4"]
    assert consumer.position([tp]) == {tp: 5}
    consumer.seek(tp, 2)
    assert [r.value for r in consume(consumer, 3, WAIT_S)] == [b"2", b"3", b"4"]
    consumer.close()


def test_assign_reads_only_the_given_partition(log: Log, topic: str) -> None:
    keys = [f"d{i}".encode() for i in range(20)]
    produce_all(log, topic, [(k, k) for k in keys])
    consumer = log.consumer("rank-0")
    consumer.assign([(topic, 1, None)])
    expected = [k for k in keys if partition_for(k, 3) == 1]
    records = consume(consumer, len(expected), WAIT_S)
    assert [r.value for r in records] == expected
    assert consumer.poll(0.5) is None
    assert consumer.assignment() == [TopicPartition(topic, 1)]
    consumer.close()


def _split(first: Consumer, second: Consumer, topic: str) -> bool:
    mine, theirs = set(first.assignment()), set(second.assignment())
    every = {TopicPartition(topic, p) for p in range(3)}
    return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == every


def test_two_members_split_the_partitions_and_see_each_record_once(log: Log, topic: str) -> None:
    first, second = log.consumer("split"), log.consumer("split")
    first.subscribe([topic])
    second.subscribe([topic])
    poll_until([first, second], lambda: _split(first, second, topic))
    owned = {id(first): set(first.assignment()), id(second): set(second.assignment())}
    produce_all(log, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(60)])
    seen: list[Record] = []
    poll_until([first, second], lambda: len(seen) >= 60, seen)
    for consumer in (first, second):  # a little longer: a duplicate would show up now
        seen.extend(consume(consumer, 1, 0.5))
    assert sorted(r.value for r in seen) == sorted(f"{i}".encode() for i in range(60))
    assert _split(first, second, topic)
    assert owned == {id(first): set(first.assignment()), id(second): set(second.assignment())}
    first.close()
    second.close()


def test_a_member_that_leaves_hands_its_partitions_over(log: Log, topic: str) -> None:
    first, second = log.consumer("handover"), log.consumer("handover")
    first.subscribe([topic])
    second.subscribe([topic])
    poll_until([first, second], lambda: _split(first, second, topic))
    second.close()
    every = [TopicPartition(topic, p) for p in range(3)]
    poll_until([first], lambda: first.assignment() == every)
    produce_all(log, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(30)])
    records = consume(first, 30, WAIT_S)
    assert sorted(r.value for r in records) == sorted(f"{i}".encode() for i in range(30))
    first.close()


def test_end_offsets(log: Log, topic: str) -> None:
    assert log.end_offsets(topic) == {0: 0, 1: 0, 2: 0}
    produce_all(log, topic, [(b"k", b"x")] * 3)
    ends = log.end_offsets(topic)
    assert sorted(ends) == [0, 1, 2]
    assert ends[partition_for(b"k", 3)] == 3
    assert sum(ends.values()) == 3
    assert log.partitions(topic) == 3


def test_create_topics_is_idempotent(log: Log, topic: str) -> None:
    log.create_topics({topic: 3})
    assert log.partitions(topic) == 3
    with pytest.raises(LogError, match="unknown topic"):
        log.partitions(f"missing-{uuid.uuid4().hex[:8]}")


def test_oversize_record_is_an_error(log: Log, topic: str) -> None:
    producer = log.producer()
    with pytest.raises(LogError, match=r"(?i)too large"):
        producer.produce(topic, b"x" * 2_000_000, key=b"k")
    producer.close()


def test_message_max_bytes_option_is_respected(log_url: str) -> None:
    log = open_log(log_url, message_max_bytes=50_000)
    name = f"t-{uuid.uuid4().hex[:12]}"
    log.create_topics({name: 1})
    producer = log.producer()
    reports: list[DeliveryReport] = []
    producer.produce(name, b"x" * 40_000, on_delivery=reports.append)
    with pytest.raises(LogError, match=r"(?i)too large"):
        producer.produce(name, b"x" * 60_000, on_delivery=reports.append)
    assert producer.flush(WAIT_S) == 0
    assert [(r.offset, r.error) for r in reports] == [(0, None)]
    producer.close()
    log.close()


def test_closed_clients_refuse_work(log: Log, topic: str) -> None:
    producer = log.producer()
    producer.close()
    for use in (lambda: producer.produce(topic, b"x"), lambda: producer.poll(0), producer.flush):
        with pytest.raises(LogError, match="closed"):
            use()
    consumer = log.consumer("closed")
    consumer.subscribe([topic])
    consumer.close()
    tp = TopicPartition(topic, 0)
    actions: list[Callable[[], object]] = [
        lambda: consumer.poll(0.1),
        lambda: consumer.commit({tp: 1}),
        lambda: consumer.seek(tp, 0),
        lambda: consumer.subscribe([topic]),
    ]
    for action in actions:
        with pytest.raises(LogError, match="closed"):
            action()


def test_seek_right_after_assign_moves_only_that_partition(log: Log, topic: str) -> None:
    keys = [f"d{i}".encode() for i in range(30)]
    produce_all(log, topic, [(k, k) for k in keys])
    ends = log.end_offsets(topic)
    consumer = log.consumer("seek-early")
    consumer.assign([(topic, 0, 0), (topic, 1, 0)])
    consumer.seek(TopicPartition(topic, 0), 2)
    records = consume(consumer, ends[0] - 2 + ends[1], WAIT_S)
    assert sorted((r.partition, r.offset) for r in records) == [
        *((0, o) for o in range(2, ends[0])),
        *((1, o) for o in range(ends[1])),
    ]
    assert consumer.poll(0.5) is None
    consumer.close()


# -- Kafka only: replication factor ------------------------------------------------------------


class KafkaAdmin:
    """A plain admin client of the test broker, to see what the log created."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def broker_ids(self) -> list[int]:
        cluster = self.admin.describe_cluster(request_timeout=WAIT_S).result(WAIT_S)
        return sorted(node.id for node in cluster.nodes)

    def default_replication_factor(self) -> int:
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            ConfigResource,
            ResourceType,
        )

        resource = ConfigResource(ResourceType.BROKER, str(self.broker_ids()[0]))
        [future] = self.admin.describe_configs([resource]).values()
        return int(future.result(WAIT_S)["default.replication.factor"].value)

    def replicas(self, topic: str) -> list[int]:
        """Replica count of each partition."""
        from confluent_kafka import TopicCollection

        [future] = self.admin.describe_topics(TopicCollection([topic])).values()
        return [len(p.replicas) for p in future.result(WAIT_S).partitions]

    def exists(self, topic: str) -> bool:
        return topic in self.admin.list_topics(timeout=WAIT_S).topics


@pytest.fixture
def kafka_admin(kafka: Any) -> KafkaAdmin:
    return KafkaAdmin(str(kafka.bootstrap))


def test_kafka_topics_get_the_brokers_default_replication_factor(
    kafka: Any, kafka_admin: KafkaAdmin
) -> None:
    """replication_factor -1 (the default) is KIP-464's "broker default", which the real broker
    accepts: the topic gets exactly the brokers' default.replication.factor."""
    log = open_log(str(kafka.url))
    name = f"t-{uuid.uuid4().hex[:12]}"
    log.create_topics({name: 3})
    log.close()
    default = kafka_admin.default_replication_factor()
    assert default >= 1
    assert kafka_admin.replicas(name) == [default] * 3


def test_kafka_explicit_replication_factor_is_honoured_or_refused_clearly(
    kafka: Any, kafka_admin: KafkaAdmin
) -> None:
    brokers = len(kafka_admin.broker_ids())
    honoured = f"t-{uuid.uuid4().hex[:12]}"
    log = open_log(str(kafka.url), replication_factor=brokers)
    log.create_topics({honoured: 2})
    log.close()
    assert kafka_admin.replicas(honoured) == [brokers] * 2

    refused = f"t-{uuid.uuid4().hex[:12]}"
    log = open_log(f"{kafka.url}?replication_factor={brokers + 1}")
    with pytest.raises(LogError) as caught:
        log.create_topics({refused: 2})
    log.close()
    message = str(caught.value)
    assert f"create topic {refused!r} (replication factor {brokers + 1})" in message
    assert "INVALID_REPLICATION_FACTOR" in message
    assert not kafka_admin.exists(refused)
