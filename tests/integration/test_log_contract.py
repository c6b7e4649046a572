"""One contract for every log backend: the embedded SQLite log and a real Apache Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bus.errors import LogError
from bus.log import DeliveryReport, Log, Record, TopicPartition, consume, open_log
from bus.log.partition import partition_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "kafka"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    if request.param == "sqlite":
        opened = open_log(f"sqlite://{tmp_path}/log.db")
    else:
        kafka: Any = request.getfixturevalue("kafka")
        opened = open_log(kafka.url)
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
    assert producer.flush(30) == 0
    producer.close()
    assert sorted(reports) == list(range(len(items)))
    assert all(r.error is None for r in reports.values()), [r.error for r in reports.values()]
    return [reports[i] for i in range(len(items))]


def read_all(log: Log, topic: str, group: str, count: int, timeout: float = 30) -> list[Record]:
    consumer = log.consumer(group)
    consumer.subscribe([topic])
    records = consume(consumer, count, timeout)
    consumer.close()
    return records


def test_round_trip_keys_headers_and_order(log: Log, topic: str) -> None:
    items = [(f"dev-{i % 4}".encode(), f"v{i}".encode()) for i in range(40)]
    reports = produce_all(log, topic, items)
    records = read_all(log, topic, "g1", 40)
    assert sorted(r.value for r in records) == sorted(v for _, v in items)
    by_key: dict[bytes | None, list[bytes]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record.value)
        assert record.headers == (("id", record.value), ("id", b"dup"))
        assert record.partition == partition_for(record.key or b"", 3)
    for key, values in by_key.items():
        assert values == [v for k, v in items if k == key]  # one key: one partition, in order
    assert {(r.partition, r.offset) for r in reports} == {(r.partition, r.offset) for r in records}


def test_key_to_partition_matches_kafka_default_partitioner(log: Log, topic: str) -> None:
    keys = [f"device-{i}".encode() for i in range(30)]
    reports = produce_all(log, topic, [(k, k) for k in keys])
    for key, report in zip(keys, reports, strict=True):
        assert report.partition == partition_for(key, 3), key


def test_commit_then_a_new_member_resumes_after_it(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", f"{i}".encode()) for i in range(10)])
    first = log.consumer("resume")
    first.subscribe([topic])
    records = consume(first, 4, 30)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3"]
    last = records[-1]
    first.commit({last.tp: last.offset + 1})
    first.close()
    rest = read_all(log, topic, "resume", 6)
    assert [r.value for r in rest] == [f"{i}".encode() for i in range(4, 10)]
    checker = log.consumer("resume")
    assert checker.committed([last.tp]) == {last.tp: 4}
    checker.close()


def test_seek_replays_from_an_offset(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", f"{i}".encode()) for i in range(5)])
    tp = TopicPartition(topic, partition_for(b"k", 3))
    consumer = log.consumer("replay")
    consumer.assign([(topic, tp.partition, 0)])
    assert [r.value for r in consume(consumer, 5, 30)] == [b"0", b"1", b"2", b"3", b"4"]
    consumer.seek(tp, 2)
    assert [r.value for r in consume(consumer, 3, 30)] == [b"2", b"3", b"4"]
    consumer.close()


def test_assign_reads_only_the_given_partition(log: Log, topic: str) -> None:
    keys = [f"d{i}".encode() for i in range(20)]
    produce_all(log, topic, [(k, k) for k in keys])
    consumer = log.consumer("rank-0")
    consumer.assign([(topic, 1, None)])
    expected = [k for k in keys if partition_for(k, 3) == 1]
    records = consume(consumer, len(expected), 30)
    assert [r.value for r in records] == expected
    assert consumer.poll(0.5) is None
    assert consumer.assignment() == [TopicPartition(topic, 1)]
    consumer.close()


def test_two_members_split_the_partitions(log: Log, topic: str) -> None:
    produce_all(log, topic, [(f"k{i}".encode(), f"{i}".encode()) for i in range(60)])
    first, second = log.consumer("split"), log.consumer("split")
    first.subscribe([topic])
    second.subscribe([topic])
    seen: list[Record] = []
    deadline = time.monotonic() + 40
    owned: tuple[list[TopicPartition], list[TopicPartition]] = ([], [])
    while time.monotonic() < deadline:
        for consumer in (first, second):
            record = consumer.poll(0.2)
            if record is not None:
                seen.append(record)
        owned = (first.assignment(), second.assignment())
        if len({r.value for r in seen}) == 60 and owned[0] and owned[1]:
            break
    assert {r.value for r in seen} == {f"{i}".encode() for i in range(60)}  # nothing lost
    assert owned[0], owned
    assert owned[1], owned
    assert not set(owned[0]) & set(owned[1])
    assert set(owned[0]) | set(owned[1]) == {TopicPartition(topic, p) for p in range(3)}
    first.close()
    second.close()


def test_end_offsets(log: Log, topic: str) -> None:
    produce_all(log, topic, [(b"k", b"x")] * 3)
    ends = log.end_offsets(topic)
    assert sorted(ends) == [0, 1, 2]
    assert ends[partition_for(b"k", 3)] == 3
    assert sum(ends.values()) == 3
    assert log.partitions(topic) == 3


def test_oversize_record_is_an_error(log: Log, topic: str) -> None:
    producer = log.producer()
    with pytest.raises(LogError, match=r"(?i)large|limit"):
        producer.produce(topic, b"x" * 2_000_000, key=b"k")
    producer.close()


def test_closed_clients_refuse_work(log: Log, topic: str) -> None:
    producer = log.producer()
    producer.close()
    with pytest.raises(LogError, match="closed"):
        producer.produce(topic, b"x")
    consumer = log.consumer("closed")
    consumer.close()
    with pytest.raises(LogError, match="closed"):
        consumer.poll(0.1)
