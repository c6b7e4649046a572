"""The sample buffer keeps the newest samples within its limits and survives a kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bus.errors import ConfigError, ValidationError
from edge_agent.buffer import Sample, SampleBuffer

ROOT = Path(__file__).resolve().parents[3]


def vector(value: float, width: int = 4) -> np.ndarray:
    return np.full(width, value, dtype=np.float32)


def test_samples_come_back_as_written(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db")
    buffer.extend(Sample(vector(i), label=float(i % 2), at=1000.0 + i) for i in range(5))
    window = buffer.window(3)
    assert window.features.shape == (3, 4)
    assert window.features[:, 0].tolist() == [2.0, 3.0, 4.0]  # the newest three, oldest first
    assert window.labels is not None
    assert window.labels.tolist() == [0.0, 1.0, 0.0]
    held_back = buffer.window(2, skip=3)
    assert held_back.features[:, 0].tolist() == [0.0, 1.0]
    assert buffer.newest(1)[0].at == 1004.0
    assert buffer.totals() == (5, 5 * 16)


def test_the_oldest_go_first_beyond_the_row_limit(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db", max_rows=10)
    for i in range(25):
        buffer.append(Sample(vector(i)))
    assert len(buffer) == 10
    assert buffer.window(100).features[:, 0].tolist() == [float(i) for i in range(15, 25)]


def test_the_oldest_go_first_beyond_the_byte_limit(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db", max_bytes=1000)  # 62 samples of 16 bytes
    buffer.extend(Sample(vector(i)) for i in range(100))
    rows, size = buffer.totals()
    assert size <= 1000
    assert rows == 62
    assert buffer.newest(1)[0].features[0] == 99.0
    buffer.append(Sample(vector(7, width=200)))  # one wide sample pushes many narrow ones out
    rows, size = buffer.totals()
    assert size <= 1000
    assert buffer.newest(1)[0].features.shape == (200,)


def test_totals_match_the_table_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = SampleBuffer(path, max_rows=30)
    buffer.extend(Sample(vector(i, width=1 + i % 7)) for i in range(50))
    buffer.close()
    again = SampleBuffer(path, max_rows=30)
    with sqlite3.connect(path) as db:
        actual = db.execute("SELECT COUNT(*), SUM(LENGTH(features)) FROM samples").fetchone()
    assert again.totals() == tuple(actual) == (30, sum(4 * (1 + i % 7) for i in range(20, 50)))


@pytest.mark.parametrize(
    ("sample", "where"),
    [
        (Sample(np.array([1.0, np.nan], np.float32)), "finite"),
        (Sample(np.ones((2, 2), np.float32)), "vector"),
        (Sample(np.array([], np.float32)), "vector"),
        (Sample(np.array(["a", "b"])), "real numbers"),
        (Sample(vector(1), label=float("inf")), "label"),
    ],
)
def test_bad_samples_are_refused_and_nothing_of_the_batch_is_kept(
    tmp_path: Path, sample: Sample, where: str
) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db")
    with pytest.raises(ValidationError, match=where):
        buffer.extend([Sample(vector(1)), sample])
    assert len(buffer) == 0


def test_mixed_widths_or_labels_cannot_make_a_window(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db")
    buffer.extend([Sample(vector(1, 3)), Sample(vector(2, 4))])
    with pytest.raises(ValidationError, match="widths"):
        buffer.window(2)
    buffer.extend([Sample(vector(1, 4), label=1.0)])
    with pytest.raises(ValidationError, match="labels"):
        buffer.window(2)


def test_limits_and_durability_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive"):
        SampleBuffer(tmp_path / "a.db", max_rows=0)
    with pytest.raises(ConfigError, match="NORMAL or FULL"):
        SampleBuffer(tmp_path / "b.db", synchronous="OFF")


WRITER = """
import sys, numpy as np
from pathlib import Path
from edge_agent.buffer import Sample, SampleBuffer
buffer = SampleBuffer(Path(sys.argv[1]), max_rows=500)
i = 0
while True:
    buffer.append(Sample(np.full(64, i, dtype=np.float32), label=float(i)))
    print(i, flush=True)
    i += 1
"""


def test_a_kill_9_while_appending_loses_at_most_the_sample_being_written(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    deadline = time.monotonic() + 60
    written = -1
    while written < 700 and time.monotonic() < deadline:  # past the row limit: deletes too
        line = writer.stdout.readline()
        if not line:
            break
        written = int(line)
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    rest = writer.stdout.read().split()
    last_reported = int(rest[-1]) if rest else written
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    buffer = SampleBuffer(path, max_rows=500)
    newest = buffer.newest(1)[0]
    assert newest.label in (float(last_reported), float(last_reported + 1))  # at most one lost
    assert len(buffer) == 500
    window = buffer.window(500)
    assert window.features[:, 0].tolist() == [float(v) for v in window.labels.tolist()]  # type: ignore[union-attr]


def test_reading_forward_from_a_position_by_stream(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db", max_rows=600)
    buffer.extend(Sample(vector(i), stream="a" if i % 3 else "b") for i in range(700))
    assert buffer.last_seq() == 700
    after = list(buffer.after(0, stream="a"))  # the 100 oldest went: positions 101-700 remain
    assert [seq for seq, _ in after] == [s for s in range(101, 701) if (s - 1) % 3]
    assert all(sample.features[0] == seq - 1 for seq, sample in after)
    assert [seq for seq, _ in buffer.after(690, stream="b")] == [691, 694, 697, 700]
    assert buffer.streams_after(698) == {"a", "b"}
    assert buffer.streams_after(699) == {"b"}


def test_positions_belong_to_one_buffer_file(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = SampleBuffer(path, max_rows=5)
    assert buffer.last_seq() == 0
    instance = buffer.instance
    buffer.extend(Sample(vector(i)) for i in range(8))
    buffer.close()
    again = SampleBuffer(path, max_rows=5)
    assert again.instance == instance
    assert again.last_seq() == 8  # never reused, though the oldest were dropped
    again.close()
    path.unlink()
    assert SampleBuffer(path).instance != instance
