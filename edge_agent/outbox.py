"""The device's outbox: every update stays on disk until the broker has acknowledged it.

An update (or a batch of raw samples) is written here (one transaction, fsynced) before it is
published; `OutboxSender` publishes what is pending at QoS 1 and deletes an entry only after the
broker's PUBACK. A device that loses power or network keeps its messages and sends them when it
is back; a crash between PUBACK and delete sends one twice, which receivers absorb by message id.

A producer that reads its messages from somewhere (the data uploader, from the buffer) keeps its
position as a named *mark* written in the same transaction as the message: a crash cannot
separate "the message is kept" from "the position moved past what it holds".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ConfigError, PublishError, ValidationError
from bus.mqtt import MqttClient, PublishHandle
from edge_agent.sqlite_file import open_wal

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    message_id: str
    topic: str
    payload: bytes
    created: float


class OutboxFullError(PublishError):
    """The outbox holds its limit: the newest update is refused, the queued ones are kept."""


class Outbox:
    def __init__(self, path: Path, *, max_messages: int = 1000, max_bytes: int = 512 << 20) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ConfigError(
                f"outbox limits must be positive: messages {max_messages}, bytes {max_bytes}"
            )
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._db = open_wal(path, SCHEMA, synchronous="FULL")  # an update is worth an fsync

    def put(
        self, topic: str, payload: bytes, message_id: str, *, mark: tuple[str, str] | None = None
    ) -> bool:
        """Keep a message until acknowledged; False if this message id is already kept.

        `mark` (key, value) is set in the same transaction: both are kept, or neither.
        """
        if not topic or not message_id:
            raise ValidationError("an outbox entry needs a topic and a message id", where="outbox")
        count, size = self.totals()
        if count >= self.max_messages or size + len(payload) > self.max_bytes:
            raise OutboxFullError(
                f"outbox at {count} messages / {size} bytes (limits {self.max_messages} / "
                f"{self.max_bytes}): message {message_id} not kept"
            )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, topic, payload, created) "
                "VALUES (?, ?, ?, ?)",
                (message_id, topic, bytes(payload), time.time()),
            )
            if mark is not None:
                self._set_mark(*mark)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return cursor.rowcount == 1

    def mark(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM marks WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_mark(self, key: str, value: str | None) -> None:
        """Set (or with None, forget) a mark on its own: a position that passes samples without
        sending any."""
        if value is None:
            self._db.execute("DELETE FROM marks WHERE key = ?", (key,))
        else:
            self._set_mark(key, value)

    def _set_mark(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO marks (key, value) VALUES (?, ?)", (key, value))

    def pending(self, limit: int = 100, *, exclude: set[str] | None = None) -> list[Entry]:
        """The oldest entries first, leaving out the ids in `exclude` (already in flight)."""
        rows = self._db.execute(
            "SELECT message_id, topic, payload, created FROM outbox ORDER BY seq LIMIT ?",
            (limit + len(exclude or ()),),
        ).fetchall()
        entries = [Entry(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
        return [e for e in entries if e.message_id not in (exclude or set())][:limit]

    def remove(self, message_id: str) -> None:
        self._db.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    def totals(self, topic: str | None = None) -> tuple[int, int]:
        """(messages, payload bytes) waiting: all of them, or those for `topic`."""
        where, args = ("WHERE topic = ?", (topic,)) if topic is not None else ("", ())
        row = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox {where}", args
        )
        count, size = row.fetchone()
        return int(count), int(size)

    def __len__(self) -> int:
        return self.totals()[0]

    def close(self) -> None:
        self._db.close()


class OutboxSender:
    """Publishes pending entries, at most `window` at a time, and deletes each on its PUBACK.

    Call `step()` from the agent's loop. A publish refused while the client is down stays in
    the outbox and is tried again on a later step; nothing is deleted without a PUBACK.
    """

    def __init__(self, outbox: Outbox, client: MqttClient, *, window: int = 16) -> None:
        self.outbox = outbox
        self.client = client
        self.window = window
        self._in_flight: dict[str, tuple[str, PublishHandle]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def step(self) -> list[str]:
        """Settle acknowledged publishes and start new ones; returns the topics of the entries
        settled (one per entry), so callers can count updates and data batches apart."""
        settled = []
        for message_id, (topic, handle) in list(self._in_flight.items()):
            if handle.acknowledged:
                self.outbox.remove(message_id)
                del self._in_flight[message_id]
                settled.append(topic)
            elif handle.failed:
                del self._in_flight[message_id]  # kept in the outbox: tried again
        room = self.window - len(self._in_flight)
        if room > 0 and self.client.connected:
            for entry in self.outbox.pending(room, exclude=set(self._in_flight)):
                try:
                    handle = self.client.publish(entry.topic, entry.payload, qos=1)
                except PublishError as exc:
                    log.warning(
                        "publish refused, kept in the outbox",
                        extra={"message_id": entry.message_id, "error": str(exc)},
                    )
                    break
                self._in_flight[entry.message_id] = (entry.topic, handle)
        return settled

    def drain(self, timeout: float) -> bool:
        """Step until the outbox is empty or `timeout` passes; True if it emptied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if len(self.outbox) == 0:
                return True
            if not self.client.threaded:
                self.client.loop(0.05)
            else:
                time.sleep(0.01)
        return len(self.outbox) == 0
