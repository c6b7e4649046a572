"""Collectors turn files, MQTT topics, data sets and plugins into batches of valid samples."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError as PydanticValidationError

from bus.errors import ConfigError
from edge_agent.buffer import Sample
from edge_agent.collectors import (
    FileCollector,
    MqttCollector,
    ReplayCollector,
    build_collector,
    file_tail,
    load_plugin,
)
from edge_agent.collectors.base import Collector, Emit
from edge_agent.collectors.parse import Tally
from edge_agent.collectors.replay import pick, subject_rows
from edge_agent.config import (
    EdgeConfig,
    FileCollectorConfig,
    MqttCollectorConfig,
    PluginCollectorConfig,
    ReplayCollectorConfig,
)
from models.datasets import load, partition_dirichlet, partition_iid, standardize
from models.workflow import prepare_data

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 10.0


class Sink:
    """An emit that keeps every batch; thread-safe, and can be told to fail."""

    def __init__(self, fail_on_batch: int | None = None) -> None:
        self.batches: list[list[Sample]] = []
        self.fail_on_batch = fail_on_batch
        self._calls = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[Sample]) -> None:
        with self._lock:
            self._calls += 1
            if self._calls == self.fail_on_batch:
                raise OSError("disk full")
            self.batches.append(list(batch))

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return [s for batch in self.batches for s in batch]

    def features(self) -> list[list[float]]:
        return [s.features.tolist() for s in self.samples]

    def labels(self) -> list[float | None]:
        return [s.label for s in self.samples]

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[Sample]:
        deadline = time.monotonic() + timeout
        while len(self.samples) < count:
            assert time.monotonic() < deadline, f"{len(self.samples)} of {count} samples came"
            time.sleep(0.01)
        return self.samples


@contextmanager
def running(collector: Collector, emit: Emit) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(emit, stop), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(DEADLINE_S)
        assert not thread.is_alive(), "run() did not return after stop"


def wait_until(predicate: Any, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def file_collector(tmp_path: Path, **fields: Any) -> FileCollector:
    fields.setdefault("path", tmp_path / "data.csv")
    config = FileCollectorConfig(poll_s=0.02, **fields)
    return FileCollector(config, state_dir=tmp_path / "state")


def append(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    with path.open("ab") as f:
        f.write(data)


# -- file: CSV and JSON lines --------------------------------------------------------------------


def test_csv_rows_become_samples(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n3.5,-4,1\n")
    collector = file_collector(tmp_path, stream="temps")
    sink = Sink()
    before = time.time()
    assert collector.poll(sink) == 2
    assert sink.features() == [[1.0, 2.0], [3.5, -4.0]]
    assert sink.labels() == [0.0, 1.0]
    first = sink.samples[0]
    assert first.features.dtype == np.float32
    assert first.stream == "temps"
    assert before <= first.at <= time.time()
    assert collector.poll(sink) == 0  # nothing new


def test_csv_features_follow_the_configured_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,c,y\n1,2,3,7\n")
    sink = Sink()
    file_collector(tmp_path, features=["c", "a"], label="y").poll(sink)
    assert sink.features() == [[3.0, 1.0]]
    assert sink.labels() == [7.0]


def test_jsonl_objects_become_samples(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"x": 1, "y": 2.5, "label": 1}\n'
        '{"y": 4, "x": 3, "label": 0}\n'  # another key order: features keep the first order
    )
    sink = Sink()
    assert file_collector(tmp_path, path=path, format="jsonl").poll(sink) == 2
    assert sink.features() == [[1.0, 2.5], [3.0, 4.0]]
    assert sink.labels() == [1.0, 0.0]


def test_jsonl_without_a_label_and_with_list_values(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"v": [1, 2, 3], "t": 9}\n')
    sink = Sink()
    file_collector(tmp_path, path=path, format="jsonl", label=None).poll(sink)
    assert sink.features() == [[1.0, 2.0, 3.0, 9.0]]
    assert sink.labels() == [None]


def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n2,")
    collector = file_collector(tmp_path)
    sink = Sink()
    assert collector.poll(sink) == 1
    assert collector.poll(sink) == 0
    append(path, "1\n")
    assert collector.poll(sink) == 1
    assert sink.features() == [[1.0], [2.0]]
    assert sink.labels() == [0.0, 1.0]
    assert collector.rejected == 0


def test_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    collector = file_collector(tmp_path, path=path)
    sink = Sink()
    with running(collector, sink):
        time.sleep(0.1)
        assert sink.samples == []
        path.write_text("a,label\n5,1\n6,0\n")
        sink.wait_for(2)
    assert sink.features() == [[5.0], [6.0]]


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n2,0\n3,0\n")
    collector = file_collector(tmp_path)
    sink = Sink()
    assert collector.poll(sink) == 3
    path.write_text("a,label\n9,1\n")  # shorter than what was read: truncated
    assert collector.poll(sink) == 1
    assert sink.features()[-1] == [9.0]
    assert sink.labels()[-1] == 1.0


def test_a_rotated_file_is_finished_then_the_new_one_read(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n")
    collector = file_collector(tmp_path)
    sink = Sink()
    assert collector.poll(sink) == 1
    append(path, "2,0\n")  # written just before the rotation
    path.rename(tmp_path / "data.csv.1")
    assert collector.poll(sink) == 1  # the old file's last line, no new file yet
    path.write_text("b,label\n10,1\n11,1\n")
    assert collector.poll(sink) == 2
    assert sink.features() == [[1.0], [2.0], [10.0], [11.0]]
    append(path, "12,1\n")
    assert collector.poll(sink) == 1
    assert sink.features()[-1] == [12.0]


def test_a_file_rotated_while_stopped_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n2,0\n3,0\n")
    assert file_collector(tmp_path).poll(Sink()) == 3
    path.rename(tmp_path / "data.csv.1")
    path.write_text("a,label\n7,1\n8,1\n9,1\n10,1\n")  # longer than the saved offset
    sink = Sink()
    assert file_collector(tmp_path).poll(sink) == 4
    assert sink.features() == [[7.0], [8.0], [9.0], [10.0]]


def test_an_over_long_line_is_skipped_up_to_its_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_tail, "READ_SIZE", 16)
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n" + "9" * 40)  # the long line is still being written
    collector = file_collector(tmp_path)
    sink = Sink()
    assert collector.poll(sink) == 1
    append(path, "9" * 30)
    assert collector.poll(sink) == 0
    append(path, ",0\n2,1\n3,1\n")
    assert collector.poll(sink) == 2
    assert sink.features() == [[1.0], [2.0], [3.0]]
    assert collector.rejected == 1


def test_bad_csv_lines_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data.csv"
    lines = [
        "a,b,label",
        "1,2,0",  # line 2: good
        "x,2,0",  # 3: not a number
        "1,2",  # 4: too few columns
        "nan,2,0",  # 5: not finite
        "1,inf,0",  # 6: not finite
        "1,1e39,0",  # 7: beyond float32
        "3,4,1",  # 8: good
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe,1,0\n5,6,0\n")  # 9: not UTF-8
    collector = file_collector(tmp_path)
    sink = Sink()
    with caplog.at_level(logging.WARNING, logger="edge_agent.collectors.file_tail"):
        assert collector.poll(sink) == 3
    assert sink.features() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert collector.rejected == 6
    rejected = [r for r in caplog.records if r.getMessage() == "collector rejected a line"]
    assert len(rejected) == 5  # the rest are counted, not logged one by one
    where = [r.__dict__["where"] for r in rejected]
    assert where == [f"{path} line {n}" for n in (3, 4, 5, 6, 7)]
    reasons = [r.__dict__["reason"] for r in rejected]
    assert "column 'a': not a number: 'x'" in reasons[0]
    assert "2 columns where the header has 3" in reasons[1]
    assert "column 'b'" in reasons[3]


def test_bad_jsonl_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"x": 1, "label": 0}\n'
        "{not json\n"
        "[1, 2]\n"
        '{"x": 2}\n'  # no label
        '{"x": "warm", "label": 1}\n'
        '{"x": NaN, "label": 1}\n'
        '{"label": 1}\n'  # no feature key
        '{"x": true, "label": 1}\n'
        '{"x": 3, "label": 1}\n'
    )
    collector = file_collector(tmp_path, path=path, format="jsonl")
    sink = Sink()
    assert collector.poll(sink) == 2
    assert sink.features() == [[1.0], [3.0]]
    assert collector.rejected == 7


def test_a_csv_header_without_the_label_rejects_lines_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    collector = file_collector(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edge_agent.collectors.file_tail"):
        assert collector.poll(Sink()) == 0
    assert collector.rejected == 1
    assert any("lacks column(s) ['label']" in str(r.__dict__.get("why")) for r in caplog.records)


def test_the_position_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\n2,0\n")
    first = Sink()
    assert file_collector(tmp_path).poll(first) == 2
    append(path, "3,1\n4,1\n5")
    again = Sink()
    restarted = file_collector(tmp_path)
    assert restarted.poll(again) == 2
    assert again.features() == [[3.0], [4.0]]
    append(path, ",1\n")
    assert file_collector(tmp_path).poll(again) == 1  # and once more, from the saved position
    assert again.features() == [[3.0], [4.0], [5.0]]


def test_a_failed_emit_leaves_its_lines_for_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,label\n" + "".join(f"{i},0\n" for i in range(1200)))
    failing = Sink(fail_on_batch=2)
    with pytest.raises(OSError, match="disk full"):
        file_collector(tmp_path).poll(failing)
    assert [len(b) for b in failing.batches] == [500]  # the first batch was written
    sink = Sink()
    assert file_collector(tmp_path).poll(sink) == 700
    got = [f[0] for f in failing.features() + sink.features()]
    assert got == [float(i) for i in range(1200)]  # nothing twice, nothing skipped
    assert [len(b) for b in sink.batches] == [500, 200]


def test_from_start_false_begins_after_the_last_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,1,0\n2,2,0\n3,")
    collector = file_collector(tmp_path, from_start=False)
    sink = Sink()
    assert collector.poll(sink) == 0
    append(path, "3,1\n4,4,1\n")
    assert collector.poll(sink) == 2  # the header was read from the top of the file
    assert sink.features() == [[3.0, 3.0], [4.0, 4.0]]
    append(path, "5,5,1\n")
    assert file_collector(tmp_path, from_start=False).poll(sink) == 1  # saved, not "the end"
    assert sink.features()[-1] == [5.0, 5.0]


def test_rejections_are_logged_a_few_times_per_period() -> None:
    now = [0.0]
    logger = logging.getLogger("test_collectors.tally")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        tally = Tally(logger, "bad", "c", burst=2, period_s=10.0, clock=lambda: now[0])
        for i in range(5):
            tally.add(f"line {i}", "why")
        assert len(records) == 2
        now[0] = 11.0
        tally.add("line 9", "why")
    finally:
        logger.removeHandler(handler)
    assert tally.count == 6
    assert records[2].__dict__["not_logged"] == 3
    assert records[3].__dict__["where"] == "line 9"


# -- replay --------------------------------------------------------------------------------------


def standardized(name: str) -> Any:
    ds = load(name)
    return standardize(ds, ds)[0]


def test_replay_plays_a_subject_in_order_and_stops_at_the_end(tmp_path: Path) -> None:
    config = ReplayCollectorConfig(dataset="watch", subject=3, rate_hz=1000.0, stream="watch")
    collector = ReplayCollector(config, state_dir=tmp_path)
    sink = Sink()
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(sink, stop), daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "a non-looping replay returns at the end"
    ds = standardized("watch")
    rows = np.flatnonzero(ds.groups == 3)
    assert len(rows) == 305
    assert [len(b) for b in sink.batches] == [200, 105]  # 0.2 s worth each at 1000 Hz
    got = np.stack([s.features for s in sink.samples])
    assert got.shape == (305, 600)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ds.x[rows].reshape(305, 600))
    assert sink.labels() == [float(y) for y in ds.y[rows]]
    assert {s.stream for s in sink.samples} == {"watch"}
    assert ReplayCollector(config, state_dir=tmp_path).index == 305  # a restart plays no more


def test_a_restarted_replay_goes_on_where_it_stopped(tmp_path: Path) -> None:
    config = ReplayCollectorConfig(dataset="watch", subject=4, rate_hz=1000.0)
    stop = threading.Event()
    first = Sink()

    def emit_once(batch: Sequence[Sample]) -> None:
        first(batch)
        stop.set()

    ReplayCollector(config, state_dir=tmp_path).run(emit_once, stop)
    assert len(first.samples) == 200
    rest = Sink()
    ReplayCollector(config, state_dir=tmp_path).run(rest, threading.Event())
    assert len(first.samples) + len(rest.samples) == 295
    ds = standardized("watch")
    rows = np.flatnonzero(ds.groups == 4)
    np.testing.assert_array_equal(rest.samples[0].features, ds.x[rows[200]].reshape(-1))
    other = ReplayCollectorConfig(dataset="watch", subject=5, rate_hz=1000.0)
    assert ReplayCollector(other, state_dir=tmp_path).index == 0  # another subject, from 0


def test_a_slow_replay_stops_promptly(tmp_path: Path) -> None:
    config = ReplayCollectorConfig(dataset="watch", subject=1, rate_hz=0.5)  # one per 2 s
    collector = ReplayCollector(config, state_dir=tmp_path)
    sink = Sink()
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(sink, stop), daemon=True)
    thread.start()
    sink.wait_for(1)
    asked = time.monotonic()
    stop.set()
    thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 0.5
    assert len(sink.samples) == 1
    assert collector.index == 1


def test_replay_deals_a_groupless_set_and_loops(tmp_path: Path) -> None:
    config = ReplayCollectorConfig(
        dataset="breast_cancer", devices=4, subject=1, rate_hz=5000.0, loop=True
    )
    collector = ReplayCollector(config, state_dir=tmp_path)
    share = partition_iid(standardized("breast_cancer"), 4, seed=0)[1]
    assert len(collector) == len(share) == 142
    sink = Sink()
    with running(collector, sink):
        samples = sink.wait_for(2 * 142 + 1)
    got = np.stack([s.features for s in samples[: 2 * 142]])
    assert got.shape[1] == 30
    np.testing.assert_allclose(got[:142], share.x, rtol=1e-6)
    np.testing.assert_array_equal(got[142:], got[:142])  # looped: the same rows again
    assert [s.label for s in samples[:142]] == [float(y) for y in share.y]


def test_replay_config_errors_name_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no subject 0; its subjects are \[1, 2, 3"):
        ReplayCollector(ReplayCollectorConfig(dataset="watch", subject=0), state_dir=tmp_path)
    with pytest.raises(ConfigError, match="to devices: set `devices`"):
        ReplayCollector(ReplayCollectorConfig(dataset="breast_cancer"), state_dir=tmp_path)
    with pytest.raises(ConfigError, match="has no subjects to split by: use partition iid"):
        ReplayCollector(
            ReplayCollectorConfig(dataset="breast_cancer", partition="natural", devices=2),
            state_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match="not a share of 4 devices"):
        ReplayCollector(
            ReplayCollectorConfig(dataset="breast_cancer", devices=4, subject=4),
            state_dir=tmp_path,
        )


def test_replay_with_the_trainers_split_never_plays_a_held_out_row(tmp_path: Path) -> None:
    """Whole recordings held out: the device plays its subject's other recordings only,
    scaled with the training side's statistics, as the trainer scales them."""
    config = ReplayCollectorConfig(
        dataset="watch", subject=3, split_seed=0, holdout="sessions", rate_hz=1000.0
    )
    rows = subject_rows(config)
    split = prepare_data("watch", seed=0, holdout="sessions")
    assert rows.sessions is not None
    assert split.test.sessions is not None
    assert not set(rows.sessions.tolist()) & set(split.test.sessions.tolist())
    everything = load("watch")
    assert everything.groups is not None
    assert 0 < len(rows) < int((everything.groups == 3).sum())
    mine = split.train.subset(np.flatnonzero(split.train.groups == 3))
    np.testing.assert_array_equal(rows.x, mine.x)


def test_replay_shuffles_and_deals_label_skewed_shares(tmp_path: Path) -> None:
    base = {"dataset": "digits", "devices": 5, "subject": 2, "partition": "dirichlet"}
    skewed = subject_rows(ReplayCollectorConfig(**base, alpha=0.1))
    shuffled = subject_rows(ReplayCollectorConfig(**base, alpha=0.1, shuffle=True))
    assert sorted(shuffled.y.tolist()) == sorted(skewed.y.tolist())
    assert shuffled.y.tolist() != skewed.y.tolist()  # same rows, another order
    iid = subject_rows(ReplayCollectorConfig(**{**base, "partition": "iid"}))
    labels_skewed = np.count_nonzero(np.bincount(skewed.y, minlength=10))
    assert labels_skewed < np.count_nonzero(np.bincount(iid.y, minlength=10)) == 10


def test_auto_subject_is_the_same_for_the_same_id_in_every_process() -> None:
    assert pick("pi-7", 10) == pick("pi-7", 10) == 7  # pinned: a change would move fleets
    assert pick("0123456789ab", 8) == 7
    # Another interpreter with another string-hash salt picks the same.
    code = "from edge_agent.collectors.replay import pick; print(pick('pi-7', 10))"
    for salt in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": salt},
            timeout=20,
        )
        assert out.stdout.strip() == "7"
    config = ReplayCollectorConfig(dataset="watch", subject="auto", device_id="pi-7")
    first, again = subject_rows(config), subject_rows(config)
    np.testing.assert_array_equal(first.x, again.x)
    with pytest.raises(ValueError, match="nothing to pick from"):
        pick("pi-7", 0)


def test_auto_subjects_spread_a_fleet_over_the_subjects() -> None:
    picks = [pick(f"{i:012x}", 8) for i in range(40)]  # container-hostname-like ids
    assert set(picks) == set(range(8))
    assert max(picks.count(s) for s in range(8)) <= 10  # no subject takes most of the fleet
    played = {
        int(np.unique(np.asarray(rows.groups)).item())
        for rows in (
            subject_rows(ReplayCollectorConfig(dataset="watch", subject="auto", device_id=d))
            for d in (f"sim-{i}" for i in range(10))
        )
    }
    assert len(played) >= 5  # ten devices over ten subjects: several, as hashes fall


def test_auto_plays_the_picked_subjects_rows(tmp_path: Path) -> None:
    device = "3f2a9c1b7d04"
    config = ReplayCollectorConfig(
        dataset="watch", subject="auto", device_id=device, rate_hz=5000.0
    )
    collector = ReplayCollector(config, state_dir=tmp_path)
    ds = standardized("watch")
    subjects = sorted(set(ds.groups.tolist()))
    expected = subjects[pick(device, len(subjects))]
    assert collector.subject == expected
    sink = Sink()
    collector.run(sink, threading.Event())  # not looping: returns at the end
    rows = np.flatnonzero(ds.groups == expected)
    got = np.stack([s.features for s in sink.samples])
    np.testing.assert_array_equal(got, ds.x[rows].reshape(len(rows), -1))
    assert sink.labels() == [float(y) for y in ds.y[rows]]
    # The position is kept for the subject picked: the same pick written out goes on...
    fixed = config.model_copy(update={"subject": expected, "device_id": None})
    assert ReplayCollector(fixed, state_dir=tmp_path).index == len(rows)
    # ...another device id picking another subject starts from the beginning.
    other = next(f"sim-{i}" for i in range(50) if subjects[pick(f"sim-{i}", 10)] != expected)
    moved = config.model_copy(update={"device_id": other})
    assert ReplayCollector(moved, state_dir=tmp_path).index == 0


def test_auto_on_the_training_side_picks_among_its_subjects() -> None:
    split = prepare_data("watch", seed=0, holdout="groups")
    kept = sorted(set(np.asarray(split.train.groups).tolist()))
    assert 5 not in kept  # held out by this split
    for i in range(12):
        device = f"sim-{i}"
        config = ReplayCollectorConfig(
            dataset="watch", subject="auto", device_id=device, split_seed=0, holdout="groups"
        )
        rows = subject_rows(config)
        assert set(np.asarray(rows.groups).tolist()) == {kept[pick(device, len(kept))]}


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_auto_picks_a_share_of_a_set_without_subjects(partition: str) -> None:
    device = "pi-7"
    config = ReplayCollectorConfig(
        dataset="breast_cancer", devices=4, subject="auto", device_id=device, partition=partition
    )
    ds = standardized("breast_cancer")
    if partition == "iid":
        shares = partition_iid(ds, 4, seed=0)
    else:
        shares = partition_dirichlet(ds, 4, alpha=config.alpha, seed=0)
    share = shares[pick(device, 4)]
    rows = subject_rows(config)
    np.testing.assert_array_equal(rows.y, share.y)
    np.testing.assert_allclose(rows.x, share.x, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"or 'auto' to pick it from the device id"):
        subject_rows(config.model_copy(update={"devices": None}))


def test_a_devices_config_fills_in_its_id_for_auto() -> None:
    def device(**replay: Any) -> EdgeConfig:
        return EdgeConfig.model_validate(
            {
                "device_id": "pi-7",
                "mqtt_url": "mqtt://broker:1883",
                "model": {"name": "har", "keys_dir": "/keys"},
                "collectors": [{"kind": "replay", "subject": "auto", **replay}],
            }
        )

    replay = device().collectors[0]
    assert isinstance(replay, ReplayCollectorConfig)
    assert (replay.subject, replay.device_id) == ("auto", "pi-7")
    given = device(device_id="pi-8").collectors[0]
    assert isinstance(given, ReplayCollectorConfig)
    assert given.device_id == "pi-8"  # one given is kept


@pytest.mark.parametrize(
    ("subject", "shown"),
    [("Auto", "'Auto'"), ("random", "'random'"), (-1, "-1"), (1.5, "1.5"), (True, "True")],
)
def test_a_bad_subject_is_refused_naming_the_field(subject: Any, shown: str) -> None:
    with pytest.raises(PydanticValidationError) as caught:
        ReplayCollectorConfig(subject=subject)
    error = caught.value.errors()[0]
    assert error["loc"] == ("subject",)
    assert "an integer, 0 or more) or 'auto'" in error["msg"]
    assert error["msg"].endswith(f"not {shown}")


def test_auto_without_a_device_id_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"subject 'auto' is picked from the device id"):
        ReplayCollector(ReplayCollectorConfig(subject="auto"), state_dir=tmp_path)
    with pytest.raises(PydanticValidationError, match="device_id must not be empty"):
        ReplayCollectorConfig(subject="auto", device_id="")


# -- MQTT ----------------------------------------------------------------------------------------


def test_mqtt_csv_payloads_are_features_only() -> None:
    config = MqttCollectorConfig(topic="t", format="csv")
    collector = MqttCollector(config)
    samples = collector.parse(b"1,2,3\n\n4, 5 ,6\n7,x,9\n", at=12.0, topic="t")
    assert [s.features.tolist() for s in samples] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert [s.label for s in samples] == [None, None]
    assert samples[0].at == 12.0
    assert collector.rejected == 1


def test_mqtt_config_errors_come_at_build_time() -> None:
    with pytest.raises(ConfigError, match="topic filter"):
        MqttCollector(MqttCollectorConfig(topic="a/#/b"))
    with pytest.raises(ConfigError):
        MqttCollector(MqttCollectorConfig(topic="a", url="http://example"))


# -- plugins and building ------------------------------------------------------------------------

PLUGIN_MODULE = """
class Counter:
    def __init__(self, options, stream, name):
        self.options, self.stream, self.name = options, stream, name

    def run(self, emit, stop):
        pass


def make(options, stream, name):
    return Counter(options, stream, name)


def broken(options, stream, name):
    raise ValueError("port is required")


def not_a_collector(options, stream, name):
    return 42
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[None]:
    root = tmp_path / "site"
    info = root / "myplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fleetlearn.collectors]\n"
        "counter = fleetlearn_test_plug:make\n"
        "broken = fleetlearn_test_plug:broken\n"
        "odd = fleetlearn_test_plug:not_a_collector\n"
        "missing = fleetlearn_test_plug_absent:make\n"
    )
    (root / "fleetlearn_test_plug.py").write_text(PLUGIN_MODULE)
    sys.path.insert(0, str(root))
    import importlib

    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("fleetlearn_test_plug", None)
        importlib.invalidate_caches()


@pytest.mark.usefixtures("plugins")
def test_a_plugin_is_found_and_built() -> None:
    config = PluginCollectorConfig(
        entry_point="counter", name="c1", stream="s1", options={"port": 502}
    )
    collector: Any = load_plugin(config)
    assert type(collector).__name__ == "Counter"
    assert (collector.options, collector.stream, collector.name) == ({"port": 502}, "s1", "c1")
    assert build_collector(config, state_dir=Path("unused")).name == "c1"


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        ("nope", r"no entry point 'nope' .*available: .*broken, counter, missing, odd"),
        ("broken", r"refused its options .*port is required"),
        ("odd", r"returned a int, which has no run\(emit, stop\)"),
        ("missing", r"could not be imported"),
    ],
)
def test_plugin_errors_say_what_is_wrong(entry_point: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_plugin(PluginCollectorConfig(entry_point=entry_point))


def test_build_collector_dispatches_on_kind(tmp_path: Path) -> None:
    file_config = FileCollectorConfig(path=tmp_path / "x.csv")
    assert isinstance(build_collector(file_config, state_dir=tmp_path), FileCollector)
    mqtt_config = MqttCollectorConfig(topic="t")
    assert isinstance(build_collector(mqtt_config, state_dir=tmp_path), MqttCollector)
    replay_config = ReplayCollectorConfig(subject=2)
    assert isinstance(build_collector(replay_config, state_dir=tmp_path), ReplayCollector)
    with pytest.raises(ConfigError, match="plain file name"):
        build_collector(FileCollectorConfig(name="../x", path=tmp_path), state_dir=tmp_path)
    assert not os.listdir(tmp_path)  # building opens nothing and writes nothing yet
