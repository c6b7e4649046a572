"""The embedded log keeps every acknowledged record through a kill -9, across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus.log import TopicPartition, consume, open_log
from bus.log.sqlite import SqliteLog

PRODUCER = """
import sys
from bus.log import open_log
log = open_log(sys.argv[1])
producer = log.producer()
def report(r):
    print(r.partition, r.offset, flush=True)
i = 0
while i < 100000:
    producer.produce("events", str(i).encode(), key=str(i % 5).encode(), on_delivery=report)
    if i % 10 == 0:
        producer.poll(0)
    i += 1
producer.flush()
"""

ROOT = Path(__file__).resolve().parents[3]


def _spawn(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_acknowledged_records_survive_kill_9(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/log.db"
    open_log(url).create_topics({"events": 3})
    process = _spawn(url)
    acked: list[tuple[int, int]] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            partition_text, offset_text = line.split()
            acked.append((int(partition_text), int(offset_text)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert len(acked) >= 300
    log = open_log(url)
    assert isinstance(log, SqliteLog)
    assert log.integrity_check() == "ok"
    ends = log.end_offsets("events")
    for partition, offset in acked:
        assert offset < ends[partition]
    consumer = log.consumer("check")
    consumer.assign([("events", p, 0) for p in range(3)])
    records = consume(consumer, sum(ends.values()), 30)
    assert len(records) == sum(ends.values())
    for partition in range(3):  # offsets are dense: 0, 1, 2, ... with no holes
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(ends[partition]))
    consumer.close()


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/shared.db"
    open_log(url).create_topics({"events": 3})
    processes = [_spawn(url) for _ in range(2)]
    time.sleep(1.5)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    log = open_log(url)
    assert log.integrity_check() == "ok"  # type: ignore[attr-defined]
    consumer = log.consumer("check")
    consumer.assign([("events", p, 0) for p in range(3)])
    total = sum(log.end_offsets("events").values())
    records = consume(consumer, total, 30)
    values = [r.value for r in records]
    assert len(values) == total
    assert values.count(b"0") == 2  # both writers got their first record in
    committed_tp = TopicPartition("events", 0)
    consumer.commit({committed_tp: 1})
    assert consumer.committed([committed_tp]) == {committed_tp: 1}
    consumer.close()
