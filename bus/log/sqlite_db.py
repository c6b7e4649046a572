"""The embedded log's storage: schema, options, and one SQLite connection with mapped errors.

Shared by the log, its producers (`bus.log.sqlite`) and its consumers (`bus.log.sqlite_group`);
every statement goes through `Db`, so every sqlite3 failure becomes a `LogError` naming the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.errors import ConfigError, LogError
from bus.log.base import DEFAULT_MAX_MESSAGE_BYTES

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


@dataclass(frozen=True)
class SqliteOptions:
    """Settings of the embedded log; also accepted as URL query options."""

    synchronous: str = "FULL"
    """FULL: a reported delivery survives power loss. NORMAL is faster and survives a process
    kill, but the last transactions may be lost when the machine itself goes down."""
    busy_timeout_s: float = 30.0
    """How long a write waits while another process holds the write lock."""
    session_timeout_s: float = 10.0
    """A group member without a heartbeat for this long is dropped; others take its partitions."""
    rebalance_interval_s: float = 0.25
    """How often a subscribed consumer heartbeats and re-deals partitions while polling."""
    message_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest key + value accepted, the same default as Kafka's producer."""
    max_pending: int = 10_000
    """Records buffered before `produce` writes them itself, bounding memory like librdkafka."""

    def __post_init__(self) -> None:
        if self.synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigError(
                f"sqlite synchronous must be FULL, NORMAL or EXTRA, got {self.synchronous!r}"
            )
        positive = (
            "busy_timeout_s",
            "session_timeout_s",
            "rebalance_interval_s",
            "message_max_bytes",
        )
        for name in (*positive, "max_pending"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sqlite option {name} must be > 0, got {getattr(self, name)!r}")


def now_ms() -> int:
    return int(time.time() * 1000)


class Db:
    """One connection, serialised by a lock, with sqlite errors mapped to LogError."""

    def __init__(self, path: Path, options: SqliteOptions) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                path, timeout=options.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={options.synchronous.upper()}")
            self.conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LogError(f"cannot open the log at {path}: {exc}") from exc

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise LogError(f"{what} on {self.path}: the log is closed")

    @contextmanager
    def tx(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the lock up front so it cannot deadlock."""
        with self.lock:
            self._check_open(what)
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
            self._check_open(what)
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise LogError(f"{what} failed on {self.path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self.conn.close()


def create_topic(conn: sqlite3.Connection, name: str, partitions: int) -> None:
    if not name or len(name) > 249 or partitions < 1:
        raise LogError(f"topic {name!r} needs a name of 1-249 characters and >= 1 partition")
    conn.execute("INSERT OR IGNORE INTO topics VALUES (?, ?)", (name, partitions))


def partition_count(db: Db, topic: str) -> int:
    """Partitions of `topic`; 0 when it does not exist (yet)."""
    rows = db.read("partitions", "SELECT partitions FROM topics WHERE name=?", (topic,))
    return int(rows[0][0]) if rows else 0


def end_offset(db: Db, topic: str, partition: int) -> int:
    rows = db.read(
        "end offset",
        "SELECT MAX(offset) FROM records WHERE topic=? AND partition=?",
        (topic, partition),
    )
    return 0 if rows[0][0] is None else int(rows[0][0]) + 1
