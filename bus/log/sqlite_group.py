"""Consumers of the embedded log: group membership by heartbeats, committed offsets, replay.

A subscribed consumer heartbeats into the `members` table while it polls; members silent for
`session_timeout_s` are dropped, and every member deals the partitions round-robin over the
live member list it reads, so ownership converges without a coordinator. Like Kafka, a moved
partition restarts at the group's committed offset.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence

from bus.errors import LogError
from bus.log.base import Record, TopicPartition
from bus.log.partition import deal
from bus.log.sqlite_db import Db, SqliteOptions, end_offset, now_ms, partition_count

FETCH_LIMIT = 500
IDLE_PAUSE_S = (0.005, 0.1)  # first and longest sleep of an idle poll: quick, yet never spinning


class SqliteConsumer:
    """A group member (`subscribe`) or owner of named partitions (`assign`); explicit commits."""

    def __init__(self, db: Db, group_id: str, reset: str, options: SqliteOptions) -> None:
        self._db = db
        self.group_id = group_id
        self._reset = reset
        self._options = options
        self._member = uuid.uuid4().hex
        self._topics: list[str] = []
        self._positions: dict[TopicPartition, int] = {}
        self._buffer: deque[Record] = deque()
        self._next_rebalance = 0.0
        self._turn = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"consumer of group {self.group_id!r} is closed")

    def subscribe(self, topics: Sequence[str]) -> None:
        self._check_open()
        self._topics = sorted(set(topics))
        self._maybe_rebalance(force=True)

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        self._check_open()
        if self._topics:
            self._leave()
        self._topics = []
        self._buffer.clear()
        self._positions = {}
        for topic, partition, offset in partitions:
            tp = TopicPartition(topic, partition)
            self._positions[tp] = offset if offset is not None else self._start_offset(tp)

    def assignment(self) -> list[TopicPartition]:
        self._check_open()
        if self._topics:
            self._maybe_rebalance(force=True)
        return sorted(self._positions)

    def _maybe_rebalance(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_rebalance:
            return
        self._next_rebalance = time.monotonic() + self._options.rebalance_interval_s
        members = self._heartbeat()
        everything = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in range(partition_count(self._db, topic))
        ]
        mine = set(deal(everything, members, self._member))
        if mine != set(self._positions):
            kept = {tp: offset for tp, offset in self._positions.items() if tp in mine}
            self._positions = {tp: kept.get(tp, -1) for tp in sorted(mine)}
            for tp, position in self._positions.items():
                if position < 0:
                    self._positions[tp] = self._start_offset(tp)
            self._buffer = deque(r for r in self._buffer if r.tp in mine)

    def _heartbeat(self) -> list[str]:
        """Say we are alive, drop members that went silent, and return the live members."""
        with self._db.tx(f"heartbeat of group {self.group_id!r}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                (self.group_id, self._member, json.dumps(self._topics), now_ms()),
            )
            expired = now_ms() - int(self._options.session_timeout_s * 1000)
            conn.execute(
                "DELETE FROM members WHERE group_id=? AND heartbeat_ms < ?",
                (self.group_id, expired),
            )
            rows = conn.execute(
                "SELECT member_id FROM members WHERE group_id=?", (self.group_id,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def _start_offset(self, tp: TopicPartition) -> int:
        committed = self.committed([tp])[tp]
        if committed is not None:
            return committed
        return 0 if self._reset == "earliest" else end_offset(self._db, tp.topic, tp.partition)

    def poll(self, timeout: float = 1.0) -> Record | None:
        self._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        pause = IDLE_PAUSE_S[0]
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
            pause = min(pause * 2, IDLE_PAUSE_S[1])

    def _fetch(self) -> None:
        """Read a batch from the next partition that has records, taking partitions in turn."""
        partitions = sorted(self._positions)
        for step in range(len(partitions)):
            tp = partitions[(self._turn + step) % len(partitions)]
            rows = self._db.read(
                f"fetch from {tp.topic}[{tp.partition}]",
                "SELECT offset, key, value, headers, timestamp_ms FROM records "
                "WHERE topic=? AND partition=? AND offset>=? ORDER BY offset LIMIT ?",
                (tp.topic, tp.partition, self._positions[tp], FETCH_LIMIT),
            )
            if rows:
                self._turn = (self._turn + step + 1) % len(partitions)
                for offset, key, value, headers, ts in rows:
                    pairs = tuple((str(n), bytes.fromhex(h)) for n, h in json.loads(str(headers)))
                    record = Record(tp.topic, tp.partition, int(offset), key, value, pairs, int(ts))
                    self._buffer.append(record)
                return

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        with self._db.tx(f"commit for group {self.group_id!r}") as conn:
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
                f"committed offset of {tp.topic}[{tp.partition}]",
                "SELECT offset FROM offsets WHERE group_id=? AND topic=? AND partition=?",
                (self.group_id, tp.topic, tp.partition),
            )
            result[tp] = int(rows[0][0]) if rows else None
        return result

    def position(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        return {tp: self._positions.get(tp) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_open()
        if tp not in self._positions:
            raise LogError(f"seek on {tp.topic}[{tp.partition}], which this consumer does not own")
        if offset < 0:
            raise LogError(f"seek on {tp.topic}[{tp.partition}] to a negative offset {offset}")
        self._positions[tp] = offset
        self._buffer = deque(r for r in self._buffer if r.tp != tp)

    def _leave(self) -> None:
        with self._db.tx(f"leave group {self.group_id!r}") as conn:
            conn.execute(
                "DELETE FROM members WHERE group_id=? AND member_id=?",
                (self.group_id, self._member),
            )

    def close(self) -> None:
        """Leave the group at once, so the other members take the partitions on their next poll."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._topics:
                self._leave()
        finally:
            self._db.close()
