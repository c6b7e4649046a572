"""The device's outbox: every update stays on disk until the broker has acknowledged it.

An update (or a batch of raw samples) is written here (one transaction, fsynced) before it is
published; `OutboxSender` publishes what is pending at QoS 1 and deletes an entry only after the
broker's PUBACK. A device that loses power or network keeps its messages and sends them when it
is back; a crash between PUBACK and delete sends one twice, which receivers absorb by message id.

A PUBACK is not enough on its own: after a broker restart, Mosquitto 2.0 has lost the bridges'
shared subscriptions until they subscribe again, and it acknowledges a QoS 1 message nobody
subscribes to with reason code 16 ("No matching subscribers") and drops it. Entries are
therefore published with `require_subscriber=True`: such an entry stays, and its topic pauses
(1 s doubling to 30 s, until a PUBACK on it succeeds) instead of being hammered in a loop.
MQTT 3.1.1 has no reason codes, so there the broker cannot tell and this protection is absent.

A producer that reads its messages from somewhere (the data uploader, from the buffer) keeps its
position as a named *mark* written in the same transaction as the message: a crash cannot
separate "the message is kept" from "the position moved past what it holds".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ConfigError, NoSubscriberError, PublishError, ValidationError
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

    def pending(
        self,
        limit: int = 100,
        *,
        exclude: set[str] | None = None,
        exclude_topics: set[str] | None = None,
    ) -> list[Entry]:
        """The oldest entries first, leaving out the ids in `exclude` (already in flight) and
        the entries for the topics in `exclude_topics` (paused)."""
        topics = sorted(exclude_topics or ())
        where = f"WHERE topic NOT IN ({', '.join('?' * len(topics))})" if topics else ""
        rows = self._db.execute(
            f"SELECT message_id, topic, payload, created FROM outbox {where} ORDER BY seq LIMIT ?",
            (*topics, limit + len(exclude or ())),
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


@dataclass
class _Pause:
    """A topic nobody subscribes to: no new publishes on it before `until`."""

    delay: float  # this pause's length; the next one doubles it, up to the maximum
    since: float  # when it began: an entry sent before then was already counted in it
    until: float


@dataclass(frozen=True)
class _InFlight:
    topic: str
    handle: PublishHandle
    sent: float  # the sender's clock at publish


class OutboxSender:
    """Publishes pending entries, at most `window` at a time, and deletes each on its PUBACK.

    Call `step()` from the agent's loop. A publish refused while the client is down stays in
    the outbox and is tried again on a later step; nothing is deleted without a PUBACK that
    says a subscriber took the message. A PUBACK with reason code 16 ("No matching
    subscribers": the broker dropped it, e.g. restarted and the bridge has not subscribed
    again) keeps the entry and pauses its topic for `backoff_min_s`, doubling with each pause
    up to `backoff_max_s`; the first PUBACK on the topic that succeeds ends the pause and resets
    the delay. One warning is logged per pause, not per message. `clock` is the time source of
    the pauses (seconds, monotonic), for tests.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: MqttClient,
        *,
        window: int = 16,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ConfigError(
                f"outbox backoff needs 0 < min <= max: min {backoff_min_s}, max {backoff_max_s}"
            )
        self.outbox = outbox
        self.client = client
        self.window = window
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._pauses: dict[str, _Pause] = {}  # by topic; gone on a PUBACK that succeeds

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def paused(self, topic: str) -> float:
        """Seconds until new publishes on `topic` resume; 0 when it is not paused."""
        pause = self._pauses.get(topic)
        return 0.0 if pause is None else max(0.0, pause.until - self.clock())

    def step(self) -> list[str]:
        """Settle acknowledged publishes and start new ones; returns the topics of the entries
        settled (one per entry), so callers can count updates and data batches apart."""
        now = self.clock()
        settled = []
        dropped: dict[str, list[_InFlight]] = {}  # topic -> entries no subscriber took
        for message_id, sent in list(self._in_flight.items()):
            if sent.handle.acknowledged:
                self.outbox.remove(message_id)
                del self._in_flight[message_id]
                settled.append(sent.topic)
                self._resume(sent.topic)
            elif sent.handle.failed:
                del self._in_flight[message_id]  # kept in the outbox: tried again
                if isinstance(sent.handle.error, NoSubscriberError):
                    dropped.setdefault(sent.topic, []).append(sent)
        for topic, entries in dropped.items():
            if topic not in settled:  # a success on the topic in this same step outweighs them
                self._pause(topic, entries, now)
        room = self.window - len(self._in_flight)
        if room > 0 and self.client.connected:
            paused = {t for t, p in self._pauses.items() if now < p.until}
            for entry in self.outbox.pending(
                room, exclude=set(self._in_flight), exclude_topics=paused
            ):
                try:
                    handle = self.client.publish(
                        entry.topic, entry.payload, qos=1, require_subscriber=True
                    )
                except PublishError as exc:
                    log.warning(
                        "publish refused, kept in the outbox",
                        extra={"message_id": entry.message_id, "error": str(exc)},
                    )
                    break
                self._in_flight[entry.message_id] = _InFlight(entry.topic, handle, now)
        return settled

    def _pause(self, topic: str, entries: list[_InFlight], now: float) -> None:
        pause = self._pauses.get(topic)
        if pause is not None and all(e.sent <= pause.since for e in entries):
            return  # sent before the current pause began: that pause already stands for them
        delay = self.backoff_min_s if pause is None else min(self.backoff_max_s, pause.delay * 2)
        self._pauses[topic] = _Pause(delay=delay, since=now, until=now + delay)
        log.warning(
            "no subscriber took the message; kept in the outbox, topic paused",
            extra={
                "topic": topic,
                "messages": len(entries),
                "retry_s": delay,
                "waiting": self.outbox.totals(topic)[0],
            },
        )

    def _resume(self, topic: str) -> None:
        pause = self._pauses.pop(topic, None)
        if pause is not None:
            log.info("a subscriber took the message; topic resumed", extra={"topic": topic})

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
