"""`sqlite:///path/log.db`: a durable log for one machine with the semantics of Kafka we rely on.

Partitioned topics with dense offsets, keyed partitioning identical to Kafka's, consumer groups
with committed offsets and a members table kept alive by heartbeats, replay by seek. WAL mode
with `synchronous=FULL`: a record whose delivery was reported survives a kill -9, and several
processes may share one file.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bus.errors import LogError
from bus.log.base import DeliveryReport, Headers, OnDelivery, Record, TopicPartition
from bus.log.partition import partition_for

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL, PRIMARY KEY (group_id, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL, member_id TEXT NOT NULL, topics TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL, PRIMARY KEY (group_id, member_id)) WITHOUT ROWID;
"""
MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default message.max.bytes, so both backends agree


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Db:
    """One connection, serialised by a lock, with sqlite errors mapped to LogError."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LogError(f"cannot open the log at {path}: {exc}") from exc

    @contextmanager
    def tx(self, what: str) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LogError(f"{what} failed on {self.path}: {exc}") from exc

    def read(self, what: str, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise LogError(f"{what} failed on {self.path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class SqliteLog:
    """The embedded log; `producer()` and `consumer()` each get their own connection."""

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", session_timeout_s: float = 10.0
    ) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise LogError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.session_timeout_s = session_timeout_s
        self._db = _Db(path, self.synchronous)

    def create_topics(self, topics: Mapping[str, int]) -> None:
        with self._db.tx("create topics") as conn:
            for name, partitions in topics.items():
                _create_topic(conn, name, partitions)

    def partitions(self, topic: str) -> int:
        rows = self._db.read("partitions", "SELECT partitions FROM topics WHERE name=?", (topic,))
        if not rows:
            raise LogError(f"unknown topic {topic!r} in {self.path}")
        return int(rows[0][0])

    def end_offsets(self, topic: str) -> dict[int, int]:
        ends = {p: 0 for p in range(self.partitions(topic))}
        rows = self._db.read(
            "end offsets",
            "SELECT partition, MAX(offset) FROM records WHERE topic=? GROUP BY partition",
            (topic,),
        )
        for partition, last in rows:
            ends[int(partition)] = int(last) + 1
        return ends

    def producer(self) -> SqliteProducer:
        return SqliteProducer(_Db(self.path, self.synchronous))

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> SqliteConsumer:
        if auto_offset_reset not in {"earliest", "latest"}:
            raise LogError(
                f"auto_offset_reset must be earliest or latest, got {auto_offset_reset!r}"
            )
        return SqliteConsumer(
            _Db(self.path, self.synchronous), group_id, auto_offset_reset, self.session_timeout_s
        )

    def integrity_check(self) -> str:
        return str(self._db.read("integrity check", "PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        self._db.close()


def _create_topic(conn: sqlite3.Connection, name: str, partitions: int) -> None:
    if not name or len(name) > 249 or partitions < 1:
        raise LogError(f"topic {name!r} needs a name of 1-249 characters and >= 1 partition")
    row = conn.execute("SELECT partitions FROM topics WHERE name=?", (name,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO topics VALUES (?, ?)", (name, partitions))


def _topic_partitions(conn: sqlite3.Connection, topic: str) -> int:
    row = conn.execute("SELECT partitions FROM topics WHERE name=?", (topic,)).fetchone()
    if row is None:  # like Kafka with auto topic creation: one partition
        _create_topic(conn, topic, 1)
        return 1
    return int(row[0])


class SqliteProducer:
    """Buffers records; `poll`/`flush` write them in one transaction, then report deliveries."""

    def __init__(self, db: _Db) -> None:
        self._db = db
        self._pending: list[
            tuple[str, bytes, bytes | None, str, int | None, OnDelivery | None]
        ] = []
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
        if len(value) + len(key or b"") > MAX_MESSAGE_BYTES:
            raise LogError(
                f"record for {topic!r} is {len(value)} bytes, over the limit of {MAX_MESSAGE_BYTES}"
            )
        encoded = json.dumps([[name, bytes(data).hex()] for name, data in headers])
        self._pending.append((topic, bytes(value), key, encoded, partition, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        if self._closed:
            raise LogError("poll on a closed producer")
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        reports = self._write(batch)
        for (*_, on_delivery), report in zip(batch, reports, strict=True):
            if on_delivery is not None:
                on_delivery(report)
        return len(batch)

    def _write(
        self, batch: list[tuple[str, bytes, bytes | None, str, int | None, OnDelivery | None]]
    ) -> list[DeliveryReport]:
        reports: list[DeliveryReport] = []
        now = _now_ms()
        with self._db.tx("produce") as conn:
            for topic, value, key, headers, partition, _ in batch:
                count = _topic_partitions(conn, topic)
                if partition is None:
                    partition = (
                        partition_for(key, count) if key is not None else random.randrange(count)
                    )
                elif not 0 <= partition < count:
                    reports.append(
                        DeliveryReport(
                            topic,
                            partition,
                            None,
                            LogError(f"{topic!r} has no partition {partition}"),
                        )
                    )
                    continue
                last = conn.execute(
                    "SELECT MAX(offset) FROM records WHERE topic=? AND partition=?",
                    (topic, partition),
                ).fetchone()[0]
                offset = 0 if last is None else int(last) + 1
                conn.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (topic, partition, offset, key, value, headers, now),
                )
                reports.append(DeliveryReport(topic, partition, offset))
        return reports

    def flush(self, timeout: float = 30.0) -> int:
        self.poll(0)
        return len(self._pending)

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True
            self._db.close()


class SqliteConsumer:
    """Group member (subscribe) or owner of explicit partitions (assign); commits are explicit."""

    def __init__(self, db: _Db, group_id: str, reset: str, session_timeout_s: float) -> None:
        self._db = db
        self.group_id = group_id
        self._reset = reset
        self._session_ms = int(session_timeout_s * 1000)
        self._member = uuid.uuid4().hex
        self._topics: list[str] = []
        self._positions: dict[TopicPartition, int] = {}
        self._buffer: deque[Record] = deque()
        self._next_rebalance = 0.0
        self._closed = False
        self._turn = 0

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"consumer of group {self.group_id!r} is closed")

    def subscribe(self, topics: Sequence[str]) -> None:
        self._check_open()
        self._topics = list(topics)
        self._heartbeat()
        self._rebalance()

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        self._check_open()
        self._topics = []
        self._positions = {}
        self._buffer.clear()
        for topic, partition, offset in partitions:
            tp = TopicPartition(topic, partition)
            self._positions[tp] = offset if offset is not None else self._start_offset(tp)

    def assignment(self) -> list[TopicPartition]:
        self._check_open()
        if self._topics:
            self._maybe_rebalance(force=True)
        return sorted(self._positions)

    def _heartbeat(self) -> None:
        with self._db.tx("heartbeat") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                (self.group_id, self._member, json.dumps(self._topics), _now_ms()),
            )
            conn.execute(
                "DELETE FROM members WHERE group_id=? AND heartbeat_ms < ?",
                (self.group_id, _now_ms() - self._session_ms),
            )

    def _maybe_rebalance(self, force: bool = False) -> None:
        if force or time.monotonic() >= self._next_rebalance:
            self._heartbeat()
            self._rebalance()
            self._next_rebalance = time.monotonic() + 0.25

    def _rebalance(self) -> None:
        """Deal the subscribed partitions round-robin over the live members, sorted by id."""
        members = [
            str(r[0])
            for r in self._db.read(
                "members",
                "SELECT member_id FROM members WHERE group_id=? ORDER BY member_id",
                (self.group_id,),
            )
        ]
        everything: list[TopicPartition] = []
        for topic in sorted(self._topics):
            with self._db.tx("topic metadata") as conn:
                count = _topic_partitions(conn, topic)
            everything.extend(TopicPartition(topic, p) for p in range(count))
        index = members.index(self._member) if self._member in members else 0
        mine = {tp for i, tp in enumerate(everything) if i % max(1, len(members)) == index}
        if mine != set(self._positions):
            self._positions = {tp: self._positions.get(tp, -1) for tp in mine}
            for tp, position in self._positions.items():
                if position < 0:
                    self._positions[tp] = self._start_offset(tp)
            self._buffer = deque(r for r in self._buffer if r.tp in mine)

    def _start_offset(self, tp: TopicPartition) -> int:
        committed = self.committed([tp])[tp]
        if committed is not None:
            return committed
        if self._reset == "earliest":
            return 0
        rows = self._db.read(
            "end offset",
            "SELECT MAX(offset) FROM records WHERE topic=? AND partition=?",
            (tp.topic, tp.partition),
        )
        last = rows[0][0]
        return 0 if last is None else int(last) + 1

    def poll(self, timeout: float = 1.0) -> Record | None:
        self._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.005
        while True:
            if self._topics:
                self._maybe_rebalance()
            if not self._buffer:
                self._fetch()
            if self._buffer:
                record = self._buffer.popleft()
                self._positions[record.tp] = record.offset + 1
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)

    def _fetch(self) -> None:
        partitions = sorted(self._positions)
        for step in range(len(partitions)):
            tp = partitions[(self._turn + step) % len(partitions)]
            rows = self._db.read(
                "fetch",
                "SELECT offset, key, value, headers, timestamp_ms FROM records "
                "WHERE topic=? AND partition=? AND offset>=? ORDER BY offset LIMIT 500",
                (tp.topic, tp.partition, self._positions[tp]),
            )
            if rows:
                self._turn = (self._turn + step + 1) % len(partitions)
                for offset, key, value, headers, ts in rows:
                    pairs = tuple((str(n), bytes.fromhex(h)) for n, h in json.loads(str(headers)))
                    self._buffer.append(
                        Record(tp.topic, tp.partition, int(offset), key, value, pairs, int(ts))
                    )
                return

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        with self._db.tx("commit") as conn:
            for tp, offset in offsets.items():
                conn.execute(
                    "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?)",
                    (self.group_id, tp.topic, tp.partition, int(offset)),
                )

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        result: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            rows = self._db.read(
                "committed",
                "SELECT offset FROM offsets WHERE group_id=? AND topic=? AND partition=?",
                (self.group_id, tp.topic, tp.partition),
            )
            result[tp] = int(rows[0][0]) if rows else None
        return result

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_open()
        if tp not in self._positions:
            raise LogError(f"seek on {tp.topic}[{tp.partition}], which this consumer does not own")
        self._positions[tp] = offset
        self._buffer = deque(r for r in self._buffer if r.tp != tp)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._db.tx("leave group") as conn:
                conn.execute(
                    "DELETE FROM members WHERE group_id=? AND member_id=?",
                    (self.group_id, self._member),
                )
        finally:
            self._db.close()
