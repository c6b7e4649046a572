"""`sqlite:///path/log.db`: a durable log for one machine with the semantics of Kafka we rely on.

Partitioned topics with dense offsets, keyed partitioning identical to Kafka's, and delivery
reports served by `poll`/`flush` so calling code is the same on both backends. WAL mode with
`synchronous=FULL`: a record whose delivery was reported survives a kill -9, and several
processes may share one file. Consumers (groups, offsets, replay): `bus.log.sqlite_group`.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bus.errors import LogError
from bus.log.base import DeliveryReport, Headers, OnDelivery, check_reset, options_from_url
from bus.log.partition import partition_for
from bus.log.sqlite_db import Db, SqliteOptions, create_topic, end_offset, now_ms, partition_count
from bus.log.sqlite_group import SqliteConsumer
from bus.urls import ParsedUrl, local_path

__all__ = ["SqliteConsumer", "SqliteLog", "SqliteOptions", "SqliteProducer"]


class SqliteLog:
    """The embedded log; `producer()` and `consumer()` each get their own connection."""

    def __init__(self, path: Path, options: SqliteOptions | None = None) -> None:
        self.path = path
        self.options = options or SqliteOptions()
        self._db = Db(path, self.options)

    @property
    def max_message_bytes(self) -> int:
        return self.options.message_max_bytes

    @classmethod
    def from_url(cls, parsed: ParsedUrl, **overrides: Any) -> SqliteLog:
        return cls(local_path(parsed), options_from_url(SqliteOptions, parsed, overrides))

    def create_topics(self, topics: Mapping[str, int]) -> None:
        with self._db.tx("create topics") as conn:
            for name, partitions in topics.items():
                create_topic(conn, name, partitions)

    def partitions(self, topic: str) -> int:
        count = partition_count(self._db, topic)
        if count == 0:
            raise LogError(f"unknown topic {topic!r} in {self.path}")
        return count

    def end_offsets(self, topic: str) -> dict[int, int]:
        return {p: end_offset(self._db, topic, p) for p in range(self.partitions(topic))}

    def producer(self) -> SqliteProducer:
        return SqliteProducer(Db(self.path, self.options), self.options)

    def consumer(self, group_id: str, *, auto_offset_reset: str = "earliest") -> SqliteConsumer:
        reset = check_reset(group_id, auto_offset_reset)
        return SqliteConsumer(Db(self.path, self.options), group_id, reset, self.options)

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok" when every page and index is sound."""
        return str(self._db.read("integrity check", "PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        self._db.close()


class _Pending(NamedTuple):
    topic: str
    value: bytes
    key: bytes | None
    headers: str
    partition: int | None
    on_delivery: OnDelivery | None


class SqliteProducer:
    """Buffers records and writes each batch in one transaction; reports wait for `poll`."""

    def __init__(self, db: Db, options: SqliteOptions) -> None:
        self._db = db
        self._options = options
        self._pending: list[_Pending] = []
        self._reports: deque[tuple[OnDelivery, DeliveryReport]] = deque()
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
        size, limit = len(value) + len(key or b""), self._options.message_max_bytes
        if size > limit:
            raise LogError(
                f"record for {topic!r} too large: {size} bytes, over the limit of {limit}"
            )
        encoded = json.dumps([[name, bytes(data).hex()] for name, data in headers])
        self._pending.append(_Pending(topic, bytes(value), key, encoded, partition, on_delivery))
        if len(self._pending) >= self._options.max_pending:
            self._write_pending()

    def poll(self, timeout: float = 0.0) -> int:
        if self._closed:
            raise LogError("poll on a closed producer")
        self._write_pending()
        served = 0
        while self._reports:
            on_delivery, report = self._reports.popleft()
            on_delivery(report)
            served += 1
        return served

    def flush(self, timeout: float = 30.0) -> int:
        self.poll(0)
        return len(self._pending)

    def _write_pending(self) -> None:
        """Write the buffer; a failed transaction becomes an error report for each record."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            reports = self._write(batch)
        except LogError as exc:
            reports = [DeliveryReport(item.topic, item.partition, None, exc) for item in batch]
        for item, report in zip(batch, reports, strict=True):
            if item.on_delivery is not None:
                self._reports.append((item.on_delivery, report))

    def _write(self, batch: list[_Pending]) -> list[DeliveryReport]:
        reports: list[DeliveryReport] = []
        counts: dict[str, int] = {}
        ends: dict[tuple[str, int], int] = {}
        timestamp = now_ms()
        with self._db.tx(f"produce {len(batch)} record(s)") as conn:
            for item in batch:
                if item.topic not in counts:  # like Kafka with auto topic creation: one partition
                    create_topic(conn, item.topic, 1)
                    row = conn.execute("SELECT partitions FROM topics WHERE name=?", (item.topic,))
                    counts[item.topic] = int(row.fetchone()[0])
                count, partition = counts[item.topic], item.partition
                if partition is None:
                    partition = (
                        partition_for(item.key, count)
                        if item.key is not None
                        else random.randrange(count)
                    )
                elif not 0 <= partition < count:
                    failure = LogError(
                        f"topic {item.topic!r} has no partition {partition} (it has {count})"
                    )
                    reports.append(DeliveryReport(item.topic, partition, None, failure))
                    continue
                if (item.topic, partition) not in ends:
                    row = conn.execute(
                        "SELECT MAX(offset) FROM records WHERE topic=? AND partition=?",
                        (item.topic, partition),
                    ).fetchone()
                    ends[(item.topic, partition)] = 0 if row[0] is None else int(row[0]) + 1
                offset = ends[(item.topic, partition)]
                ends[(item.topic, partition)] = offset + 1
                conn.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.topic, partition, offset, item.key, item.value, item.headers, timestamp),
                )
                reports.append(DeliveryReport(item.topic, partition, offset))
        return reports

    def close(self) -> None:
        if not self._closed:
            try:
                self.flush()
            finally:
                self._closed = True
                self._db.close()
