"""OutboxSender against a fake client: an entry no subscriber took (PUBACK reason 16) stays in
the outbox, and its topic pauses with a bounded, doubling backoff on an injected clock."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bus.errors import ConfigError, NoSubscriberError, PublishError
from edge_agent.outbox import Outbox, OutboxSender

UPDATE = "f/devices/d/update"
DATA = "f/devices/d/data"


class FakeHandle:
    def __init__(self, topic: str, payload: bytes, require_subscriber: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.require_subscriber = require_subscriber
        self.error: PublishError | None = None
        self.done = False

    @property
    def acknowledged(self) -> bool:
        return self.done and self.error is None

    @property
    def failed(self) -> bool:
        return self.done and self.error is not None


class FakeClient:
    """Records publishes; the test answers each handle as the broker would."""

    def __init__(self) -> None:
        self.connected = True
        self.threaded = True
        self.sent: list[FakeHandle] = []

    def publish(self, topic: str, payload: bytes, **options: Any) -> FakeHandle:
        assert options.get("qos") == 1
        handle = FakeHandle(topic, payload, bool(options.get("require_subscriber")))
        self.sent.append(handle)
        return handle

    def waiting(self) -> list[FakeHandle]:
        return [h for h in self.sent if not h.done]

    def ack_all(self) -> None:
        for handle in self.waiting():
            handle.done = True

    def no_subscriber_all(self, topic: str | None = None) -> None:
        for handle in self.waiting():
            if topic is None or handle.topic == topic:
                handle.error = NoSubscriberError(f"no subscriber took the message on {topic!r}")
                handle.done = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sender(tmp_path: Path, **options: Any) -> tuple[OutboxSender, FakeClient, Clock, Outbox]:
    outbox = Outbox(tmp_path / "outbox.db")
    client, clock = FakeClient(), Clock()
    return OutboxSender(outbox, client, clock=clock, **options), client, clock, outbox  # type: ignore[arg-type]


def pause_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "no subscriber" in r.getMessage()]


def test_every_entry_asks_for_a_subscriber_and_goes_on_success(tmp_path: Path) -> None:
    s, client, _, outbox = sender(tmp_path)
    outbox.put(UPDATE, b"u1", "u1")
    outbox.put(DATA, b"d1", "d1")
    assert s.step() == []
    assert [h.require_subscriber for h in client.sent] == [True, True]
    client.ack_all()
    assert sorted(s.step()) == [DATA, UPDATE]
    assert len(outbox) == 0


def test_no_subscriber_keeps_the_entry_and_backs_off_doubling_to_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.outbox")
    s, client, clock, outbox = sender(tmp_path, backoff_min_s=1.0, backoff_max_s=8.0)
    for i in range(3):
        outbox.put(UPDATE, f"u{i}".encode(), f"u{i}")
    s.step()
    assert len(client.sent) == 3
    delays = []
    for _ in range(6):
        client.no_subscriber_all()
        assert s.step() == []
        assert len(outbox) == 3  # nothing deleted
        delay = s.paused(UPDATE)
        delays.append(delay)
        before = len(client.sent)
        clock.now += delay - 0.01
        s.step()
        assert len(client.sent) == before, "published again while paused"
        clock.now += 0.01
        s.step()
        assert len(client.sent) == before + 3, "not published again once the pause ended"
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert len(pause_warnings(caplog)) == 6  # one per pause, not one per message
    warning = pause_warnings(caplog)[0]
    assert warning.__dict__["messages"] == 3
    assert warning.__dict__["topic"] == UPDATE


def test_a_success_ends_the_pause_and_resets_the_backoff(tmp_path: Path) -> None:
    s, client, clock, outbox = sender(tmp_path)
    outbox.put(UPDATE, b"u0", "u0")
    s.step()
    for _ in range(3):  # 1, 2, 4 s
        client.no_subscriber_all()
        s.step()
        clock.now += s.paused(UPDATE)
        s.step()
    client.ack_all()  # the bridge has subscribed again
    assert s.step() == [UPDATE]
    assert s.paused(UPDATE) == 0
    outbox.put(UPDATE, b"u1", "u1")
    s.step()
    client.no_subscriber_all()
    s.step()
    assert s.paused(UPDATE) == 1.0  # started over
    assert [e.message_id for e in outbox.pending()] == ["u1"]


def test_late_answers_from_before_a_pause_do_not_extend_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.outbox")
    s, client, clock, outbox = sender(tmp_path)
    for i in range(4):
        outbox.put(UPDATE, f"u{i}".encode(), f"u{i}")
    s.step()
    client.sent[0].error = NoSubscriberError("none")
    client.sent[0].done = True
    s.step()
    assert s.paused(UPDATE) == 1.0
    clock.now += 0.5
    client.no_subscriber_all()  # the rest of the same window, answered later
    s.step()
    assert s.paused(UPDATE) == 0.5  # the same pause, not a longer one
    clock.now += 0.6
    client.no_subscriber_all()
    s.step()
    assert s.paused(UPDATE) == 0  # over: all four were published again and wait for answers
    assert len(client.waiting()) == 4
    assert len(pause_warnings(caplog)) == 1


def test_a_topic_without_subscriber_does_not_hold_back_another(tmp_path: Path) -> None:
    s, client, _, outbox = sender(tmp_path, window=2)
    outbox.put(DATA, b"d0", "d0")
    outbox.put(DATA, b"d1", "d1")
    outbox.put(UPDATE, b"u0", "u0")
    s.step()
    assert [h.topic for h in client.sent] == [DATA, DATA]
    client.no_subscriber_all(DATA)
    s.step()  # the data topic pauses; the update, behind the data batches, goes now
    assert [h.topic for h in client.waiting()] == [UPDATE]
    client.ack_all()
    assert s.step() == [UPDATE]
    assert s.paused(DATA) == 1.0
    assert [e.message_id for e in outbox.pending()] == ["d0", "d1"]


def test_other_failures_retry_at_once_without_a_pause(tmp_path: Path) -> None:
    s, client, _, outbox = sender(tmp_path)
    outbox.put(UPDATE, b"u0", "u0")
    s.step()
    client.sent[0].error = PublishError("the client was closed before the broker acknowledged")
    client.sent[0].done = True
    s.step()
    assert s.paused(UPDATE) == 0
    assert len(client.waiting()) == 1  # published again in the same step, as before
    assert len(outbox) == 1


def test_drain_ends_by_its_timeout_while_no_subscriber_takes_anything(tmp_path: Path) -> None:
    s, client, _, outbox = sender(tmp_path)  # the pause's clock stands still: it never ends
    outbox.put(UPDATE, b"u0", "u0")
    s.step()
    client.no_subscriber_all()
    started = time.monotonic()
    assert s.drain(0.3) is False  # drain's own deadline is real time
    assert 0.3 <= time.monotonic() - started < 5
    assert len(outbox) == 1
    assert len(client.sent) == 1  # and nothing was hammered meanwhile


def test_bad_backoff_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backoff"):
        sender(tmp_path, backoff_min_s=5, backoff_max_s=1)
