"""The embedded log keeps every acknowledged record through a kill -9, across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.errors import ConfigError, LogError
from bus.log import DeliveryReport, Record, TopicPartition, consume, open_log
from bus.log.sqlite import SqliteLog

# Produces `count` records "<tag>-<i>" and prints "partition offset value" once each is durable.
PRODUCER = """
import sys
from bus.log import open_log
url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = open_log(url).producer()
if len(sys.argv) > 4:  # a start gate: say ready, wait for the go file, meet again halfway
    import pathlib, time
    gate = pathlib.Path(sys.argv[4])
    gate.with_suffix(f".{tag}").touch()
    while not gate.exists():
        time.sleep(0.005)
def remember(value):
    def report(r):
        assert r.error is None, r.error
        print(r.partition, r.offset, value, flush=True)
    return report
for i in range(count):
    value = f"{tag}-{i}"
    producer.produce("events", value.encode(), key=str(i % 5).encode(), on_delivery=remember(value))
    if i % 10 == 0:
        producer.poll(0)
    if len(sys.argv) > 4 and i == count // 2:  # halfway: wait until the other is halfway too
        producer.flush()
        gate.with_suffix(f".{tag}-half").touch()
        deadline = time.monotonic() + 60
        while len(list(gate.parent.glob("go.*-half"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
producer.flush()
producer.close()
"""

ROOT = Path(__file__).resolve().parents[3]


def _spawn(
    url: str, tag: str, count: int, *, acks: bool = True, gate: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url, tag, str(count), *([str(gate)] if gate else [])],
        stdout=subprocess.PIPE if acks else subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _read_everything(log: SqliteLog, partitions: int) -> list[Record]:
    consumer = log.consumer("check")
    consumer.assign([("events", p, 0) for p in range(partitions)])
    total = sum(log.end_offsets("events").values())
    records = consume(consumer, total, 30)
    assert consumer.poll(0.2) is None
    consumer.close()
    return records


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteLog]:
    opened = open_log(f"sqlite://{tmp_path}/log.db")
    assert isinstance(opened, SqliteLog)
    opened.create_topics({"events": 3})
    yield opened
    opened.close()


def test_acknowledged_records_survive_kill_9(log: SqliteLog) -> None:
    process = _spawn(f"sqlite://{log.path}", "a", 1_000_000)
    acked: list[tuple[int, int, str]] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while len(acked) < 2000 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            partition_text, offset_text, value = line.split()
            acked.append((int(partition_text), int(offset_text), value))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert len(acked) >= 2000
    reopened = SqliteLog(log.path)
    assert reopened.integrity_check() == "ok"
    records = _read_everything(reopened, 3)
    stored = {(r.partition, r.offset): r.value.decode() for r in records}
    for partition, offset, value in acked:  # every acknowledged record is there, unchanged
        assert stored[(partition, offset)] == value
    for partition in range(3):  # offsets are dense: 0, 1, 2, ... with no holes
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(reopened.end_offsets("events")[partition]))
    reopened.close()


def test_two_producer_processes_and_a_consumer_share_one_file(log: SqliteLog) -> None:
    count = 20_000
    gate = log.path.parent / "go"
    processes = [
        _spawn(f"sqlite://{log.path}", tag, count, acks=False, gate=gate) for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 60  # both started and opened the log: then they go together
    while not all(gate.with_suffix(f".{t}").exists() for t in "ab"):
        assert time.monotonic() < deadline, "the producers did not start"
        assert all(p.poll() is None for p in processes), "a producer exited before the start"
        time.sleep(0.01)
    gate.touch()
    consumer = log.consumer("live")
    consumer.subscribe(["events"])
    seen: list[Record] = []
    deadline = time.monotonic() + 60
    while len(seen) < 2 * count and time.monotonic() < deadline:  # reads while they write
        record = consumer.poll(0.5)
        if record is not None:
            seen.append(record)
    consumer.close()
    for process in processes:
        assert process.wait(timeout=30) == 0
    values = [r.value.decode() for r in seen]
    assert sorted(values) == sorted(f"{tag}-{i}" for tag in "ab" for i in range(count))
    for tag in "ab":  # each producer's records keep their order within a partition
        for partition in range(3):
            mine = [
                int(r.value[2:])
                for r in seen
                if r.partition == partition and r.value[:1] == tag.encode()
            ]
            assert mine == sorted(mine)
    for partition in range(3):
        offsets = [r.offset for r in seen if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    for partition in range(3):  # the writers really did take turns in every partition
        tags = "".join(chr(r.value[0]) for r in seen if r.partition == partition)
        assert "ab" in tags
        assert "ba" in tags
    assert log.integrity_check() == "ok"


def test_a_silent_member_loses_its_partitions_after_the_session_timeout(tmp_path: Path) -> None:
    log = open_log(f"sqlite://{tmp_path}/log.db", session_timeout_s=1.0)
    log.create_topics({"events": 4})
    silent, live = log.consumer("g"), log.consumer("g")
    silent.subscribe(["events"])  # then never polls again, as if its process hung
    live.subscribe(["events"])
    assert len(live.assignment()) == 2
    deadline = time.monotonic() + 10
    while len(live.assignment()) < 4 and time.monotonic() < deadline:
        live.poll(0.2)
    assert live.assignment() == [TopicPartition("events", p) for p in range(4)]
    live.close()
    silent.close()
    log.close()


def test_a_full_buffer_is_written_without_poll_and_reported_on_poll(tmp_path: Path) -> None:
    log = open_log(f"sqlite://{tmp_path}/log.db", max_pending=10)
    log.create_topics({"events": 1})
    producer = log.producer()
    reports: list[DeliveryReport] = []
    for i in range(25):
        producer.produce("events", f"{i}".encode(), on_delivery=reports.append)
    assert log.end_offsets("events") == {0: 20}  # two full batches went to disk
    assert reports == []  # callbacks run only in poll/flush, on the caller's thread
    assert producer.flush() == 0
    assert [r.offset for r in reports] == list(range(25))
    producer.close()
    log.close()


def test_a_missing_partition_is_reported_not_raised(log: SqliteLog) -> None:
    producer = log.producer()
    reports: list[DeliveryReport] = []
    producer.produce("events", b"x", partition=7, on_delivery=reports.append)
    producer.produce("events", b"y", partition=2, on_delivery=reports.append)
    producer.flush()
    assert "no partition 7" in str(reports[0].error)
    assert (reports[1].partition, reports[1].offset, reports[1].error) == (2, 0, None)
    producer.close()


def test_an_idle_poll_sleeps_instead_of_spinning(log: SqliteLog) -> None:
    consumer = log.consumer("idle")
    consumer.assign([("events", 0, 0)])
    cpu, wall = time.process_time(), time.monotonic()
    assert consumer.poll(1.0) is None
    assert time.monotonic() - wall >= 0.95
    assert time.process_time() - cpu < 0.25
    consumer.close()


def test_options_come_from_the_url(tmp_path: Path) -> None:
    log = open_log(f"sqlite://{tmp_path}/log.db?synchronous=normal&session_timeout_s=2.5")
    assert isinstance(log, SqliteLog)
    assert (log.options.synchronous, log.options.session_timeout_s) == ("normal", 2.5)
    log.close()
    with pytest.raises(ConfigError, match="unknown option"):
        open_log(f"sqlite://{tmp_path}/log.db?synchronus=FULL")
    with pytest.raises(ConfigError, match="synchronous"):
        open_log(f"sqlite://{tmp_path}/log.db", synchronous="OFF")
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        SqliteLog(tmp_path / "log.db").consumer("g", auto_offset_reset="smallest")


def test_a_closed_log_refuses_work(log: SqliteLog) -> None:
    log.close()
    with pytest.raises(LogError, match="closed"):
        log.end_offsets("events")
