"""The outbox keeps every update, in order, until it is removed after its PUBACK."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.errors import ConfigError, ValidationError
from edge_agent.outbox import Outbox, OutboxFullError

ROOT = Path(__file__).resolve().parents[3]


def test_entries_come_out_oldest_first_and_go_only_when_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(5):
        assert outbox.put("f/devices/d/update", f"u{i}".encode(), f"id-{i}")
    assert [e.message_id for e in outbox.pending(3)] == ["id-0", "id-1", "id-2"]
    assert [e.message_id for e in outbox.pending(3, exclude={"id-0", "id-2"})] == [
        "id-1",
        "id-3",
        "id-4",
    ]
    outbox.remove("id-1")
    assert [e.payload for e in outbox.pending(10)] == [b"u0", b"u2", b"u3", b"u4"]
    assert outbox.totals() == (4, 8)


def test_the_same_message_id_is_kept_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    assert outbox.put("t", b"a", "same")
    assert not outbox.put("t", b"b", "same")
    assert [e.payload for e in outbox.pending()] == [b"a"]


def test_a_full_outbox_refuses_the_newest_and_keeps_the_rest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=3, max_bytes=100)
    for i in range(3):
        outbox.put("t", b"x", f"id-{i}")
    with pytest.raises(OutboxFullError, match="id-3 not kept"):
        outbox.put("t", b"x", "id-3")
    outbox.remove("id-0")
    with pytest.raises(OutboxFullError, match="bytes"):
        outbox.put("t", b"x" * 99, "big")
    assert len(outbox) == 2


def test_entries_survive_a_reopen(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put("t", b"kept", "id-1")
    outbox.close()
    assert [e.payload for e in Outbox(tmp_path / "outbox.db").pending()] == [b"kept"]


def test_bad_entries_and_limits_are_refused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    with pytest.raises(ValidationError, match="topic and a message id"):
        outbox.put("", b"x", "id")
    with pytest.raises(ConfigError, match="positive"):
        Outbox(tmp_path / "other.db", max_messages=0)


WRITER = """
import sys
from pathlib import Path
from edge_agent.outbox import Outbox
outbox = Outbox(Path(sys.argv[1]), max_messages=100_000)
i = 0
while True:
    outbox.put("f/devices/d/update", b"u" * 2048, f"id-{i}")
    print(i, flush=True)
    i += 1
"""


def test_every_put_that_returned_survives_a_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    returned = -1
    deadline = time.monotonic() + 60
    while returned < 200 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        returned = int(line)
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    rest = writer.stdout.read().split()
    returned = int(rest[-1]) if rest else returned
    ids = [e.message_id for e in Outbox(path).pending(100_000)]
    assert ids[: returned + 1] == [f"id-{i}" for i in range(returned + 1)]
    assert len(ids) in (returned + 1, returned + 2)  # the put in progress may have committed


def test_a_mark_is_kept_with_its_message_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=2)
    assert outbox.mark("pos") is None
    outbox.put("f/devices/d/data", b"batch", "id-1", mark=("pos", "10"))
    assert outbox.mark("pos") == "10"
    outbox.put("f/devices/d/data", b"batch", "id-2", mark=("pos", "20"))
    with pytest.raises(OutboxFullError):
        outbox.put("f/devices/d/data", b"batch", "id-3", mark=("pos", "30"))
    assert outbox.mark("pos") == "20"

    def broken(key: str, value: str) -> None:
        raise RuntimeError("disk gone")

    outbox.remove("id-2")
    monkeypatch.setattr(outbox, "_set_mark", broken)
    with pytest.raises(RuntimeError):
        outbox.put("f/devices/d/data", b"batch", "id-4", mark=("pos", "40"))
    monkeypatch.undo()
    assert [e.message_id for e in outbox.pending()] == ["id-1"]  # the message rolled back too
    outbox.set_mark("pos", None)
    outbox.close()
    assert Outbox(tmp_path / "outbox.db").mark("pos") is None


def test_totals_by_topic(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put("f/devices/d/update", b"uu", "u1")
    outbox.put("f/devices/d/data", b"ddd", "d1")
    outbox.put("f/devices/d/data", b"d", "d2")
    assert outbox.totals("f/devices/d/data") == (2, 4)
    assert outbox.totals() == (3, 6)
