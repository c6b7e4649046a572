"""Raw samples leave the buffer in DataBatch messages through the outbox: each exactly once,
in batches the DDP job accepts, within the hourly cap, and never before the owner opts in."""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.errors import ConfigError, ValidationError
from bus.protocol import DataBatch, Message, decode_message
from cloud_trainer.ddp.stream import samples_of
from edge_agent.buffer import Sample, SampleBuffer
from edge_agent.config import DataUploadConfig, load_edge_config
from edge_agent.data_upload import MARK, DataUploader, data_batch_id
from edge_agent.metrics import EdgeMetrics
from edge_agent.outbox import Outbox
from models.datasets import load

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
TOPIC = "fleetlearn/farm/devices/pi-1/data"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(
    value: float, label: float | None = None, *, width: int = 6, stream: str = "imu"
) -> Sample:
    return Sample(np.full(width, value, np.float32), label, 1000.0 + value, stream)


def labelled(values: Iterable[int], **kw: Any) -> list[Sample]:
    return [sample(v, float(v % 7), **kw) for v in values]


def uploader(
    tmp: Path,
    clock: Clock | None = None,
    metrics: EdgeMetrics | None = None,
    outbox_messages: int = 10_000,
    **fields: Any,
) -> tuple[DataUploader, SampleBuffer, Outbox]:
    buffer = SampleBuffer(tmp / "buffer.db")
    outbox = Outbox(tmp / "outbox.db", max_messages=outbox_messages)
    config = DataUploadConfig(enabled=True, **{"from_start": True, **fields})
    upload = DataUploader(
        config,
        buffer=buffer,
        outbox=outbox,
        topic=TOPIC,
        fleet="farm",
        device_id="pi-1",
        metrics=metrics or EdgeMetrics(),
        clock=clock or Clock(),
    )
    return upload, buffer, outbox


LOOKS = itertools.count(0.0, 3600.0)  # the agent loop's monotonic clock, each look due


def drain(upload: DataUploader) -> int:
    """Looks until one queues nothing; returns batches queued."""
    total = 0
    while queued := upload.step(next(LOOKS)):
        total += queued
    return total


def sent(outbox: Outbox) -> list[Message]:
    """The data batches waiting in the outbox, oldest first."""
    return [decode_message(e.payload) for e in outbox.pending(100_000) if e.topic == TOPIC]


def values(messages: Iterable[Message]) -> list[float]:
    """The first feature of every sample sent, in order (each test sample is v repeated)."""
    return [float(row.reshape(-1)[0]) for m in messages for row in m.tensors["x"]]


def close(*things: SampleBuffer | Outbox) -> None:
    for thing in things:
        thing.close()


def test_samples_go_in_batches_the_ddp_job_accepts(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(
        tmp_path, batch_samples=64, sample_shape=[2, 3], label_names=list("abcdefg")
    )
    buffer.extend(labelled(range(150)))
    assert drain(upload) == 3
    messages = sent(outbox)
    assert [m.envelope.num_samples for m in messages] == [64, 64, 22]  # type: ignore[union-attr]
    expected = buffer.newest(150)
    for message, entry in zip(messages, outbox.pending(10), strict=True):
        header = message.envelope
        assert isinstance(header, DataBatch)
        assert (header.device_id, header.stream, header.fleet) == ("pi-1", "imu", "farm")
        assert header.label_names == tuple("abcdefg")
        assert header.payload is not None
        assert header.payload.compression == "zstd"
        assert entry.topic == TOPIC
        x, y = samples_of(entry.payload, (2, 3))
        assert x.dtype == np.float32
        assert y.dtype == np.int64
    x = np.concatenate([m.tensors["x"] for m in messages])
    y = np.concatenate([m.tensors["y"] for m in messages])
    assert x.shape == (150, 2, 3)
    np.testing.assert_array_equal(x.reshape(150, 6), np.stack([s.features for s in expected]))
    assert y.tolist() == [int(s.label or 0) for s in expected]
    assert upload.step(next(LOOKS)) == 0  # nothing new, nothing sent
    assert len(outbox) == 3


def test_only_labelled_samples_go_unless_asked_and_unlabelled_ones_travel_apart(
    tmp_path: Path,
) -> None:
    metrics = EdgeMetrics()
    upload, buffer, outbox = uploader(tmp_path / "a", metrics=metrics, batch_samples=10)
    mixed = [sample(v, None if v % 3 == 0 else 1.0) for v in range(12)]
    buffer.extend(mixed)
    drain(upload)
    assert values(sent(outbox)) == [v for v in range(12) if v % 3]
    assert (
        metrics.registry.get_sample_value(
            "edge_data_samples_skipped_total", {"stream": "imu", "reason": "unlabelled"}
        )
        == 4
    )
    assert (
        metrics.registry.get_sample_value("edge_data_samples_queued_total", {"stream": "imu"}) == 8
    )

    upload, buffer, outbox = uploader(tmp_path / "b", labelled_only=False, batch_samples=10)
    buffer.extend(mixed)
    drain(upload)
    messages = sent(outbox)
    # a batch is all labelled (x, y) or all unlabelled (x only): the runs split at each change
    assert [values([m]) for m in messages] == [
        [0.0],
        [1.0, 2.0],
        [3.0],
        [4.0, 5.0],
        [6.0],
        [7.0, 8.0],
        [9.0],
        [10.0, 11.0],
    ]
    assert [sorted(m.tensors) for m in messages[:2]] == [["x"], ["x", "y"]]


def test_labels_that_are_not_class_indices_stay_home(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path, label_names=["sit", "walk"])
    buffer.extend([sample(0, 1.0), sample(1, 0.5), sample(2, -1.0), sample(3, 2.0), sample(4, 0.0)])
    drain(upload)
    assert values(sent(outbox)) == [0.0, 4.0]
    assert [m.tensors["y"].tolist() for m in sent(outbox)] == [[1, 0]]


def test_a_change_of_shape_starts_a_new_batch(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path / "flat")
    widths = [6, 6, 6, 4, 4, 6]
    buffer.extend([sample(i, 1.0, width=w) for i, w in enumerate(widths)])
    drain(upload)
    assert [m.tensors["x"].shape for m in sent(outbox)] == [(3, 6), (2, 4), (1, 6)]

    metrics = EdgeMetrics()
    upload, buffer, outbox = uploader(tmp_path / "shaped", metrics=metrics, sample_shape=[3, 2])
    buffer.extend([sample(i, 1.0, width=w) for i, w in enumerate(widths)])
    drain(upload)
    messages = sent(outbox)
    assert [m.tensors["x"].shape for m in messages] == [(4, 3, 2)]  # the 4-wide ones cannot fit
    assert values(messages) == [0.0, 1.0, 2.0, 5.0]
    assert (
        metrics.registry.get_sample_value(
            "edge_data_samples_skipped_total", {"stream": "imu", "reason": "shape"}
        )
        == 2
    )


def test_streams_travel_apart_and_only_the_chosen_ones(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path / "all")
    buffer.extend(labelled(range(0, 5), stream="imu") + labelled(range(10, 13), stream="door"))
    buffer.extend(labelled(range(5, 8), stream="imu"))
    drain(upload)
    by_stream: dict[str, list[float]] = {}
    for message in sent(outbox):
        assert isinstance(message.envelope, DataBatch)
        by_stream.setdefault(message.envelope.stream, []).extend(values([message]))
    assert by_stream == {"imu": [float(v) for v in range(8)], "door": [10.0, 11.0, 12.0]}

    upload, buffer, outbox = uploader(tmp_path / "chosen", streams=["door"])
    buffer.extend(labelled(range(0, 5), stream="imu") + labelled(range(10, 13), stream="door"))
    drain(upload)
    assert [m.envelope.stream for m in sent(outbox)] == ["door"]  # type: ignore[union-attr]


def test_the_hourly_cap_holds_samples_back_and_drops_none(tmp_path: Path) -> None:
    clock = Clock()
    metrics = EdgeMetrics()
    upload, buffer, outbox = uploader(
        tmp_path, clock, metrics, batch_samples=40, max_samples_per_hour=100
    )
    buffer.extend(labelled(range(250)))
    drain(upload)
    assert [m.envelope.num_samples for m in sent(outbox)] == [40, 40, 20]  # type: ignore[union-attr]
    clock.now += 1800
    assert upload.step(next(LOOKS)) == 0  # within the hour: the position waits
    assert metrics.registry.get_sample_value("edge_data_upload_waits_total", {"reason": "cap"})
    close(buffer, outbox)

    # the cap's hour survives a restart
    upload, buffer, outbox = uploader(tmp_path, clock, batch_samples=40, max_samples_per_hour=100)
    assert drain(upload) == 0
    clock.now += 1801  # the first 100 are an hour old
    drain(upload)
    clock.now += 3601
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in range(250)]  # all, once, in order


def test_offline_the_outbox_holds_a_bounded_queue_and_the_rest_waits(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path, batch_samples=10, max_queued_batches=3)
    outbox.put("fleetlearn/farm/devices/pi-1/update", b"an update", "u" * 32)
    buffer.extend(labelled(range(55)))
    drain(upload)
    assert outbox.totals(TOPIC)[0] == 3
    assert len(outbox) == 4  # the update found its room
    received: list[float] = []
    while batches := sent(outbox):
        assert len(batches) <= 3
        received += values(batches)
        for entry in outbox.pending(100):  # back online: the broker acknowledges them
            outbox.remove(entry.message_id)
        drain(upload)
    assert received == [float(v) for v in range(55)]


def test_a_full_outbox_refuses_a_batch_and_the_position_waits(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(
        tmp_path, outbox_messages=4, batch_samples=10, max_queued_batches=2
    )
    for i in range(3):
        outbox.put("fleetlearn/farm/devices/pi-1/update", b"u", f"{i:032x}")
    buffer.extend(labelled(range(25)))
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in range(10)]
    outbox.remove(f"{0:032x}")
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in range(20)]


def test_the_position_survives_a_restart_with_no_loss_and_no_duplicate(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path, batch_samples=16)
    buffer.extend(labelled(range(40)))
    drain(upload)
    close(buffer, outbox)
    upload, buffer, outbox = uploader(tmp_path, batch_samples=16)
    buffer.extend(labelled(range(40, 70)))
    drain(upload)
    messages = sent(outbox)
    assert values(messages) == [float(v) for v in range(70)]
    assert len({m.envelope.id for m in messages}) == len(messages)


def test_a_batch_that_is_not_kept_does_not_move_the_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload, buffer, outbox = uploader(tmp_path, batch_samples=16)
    buffer.extend(labelled(range(40)))
    before = outbox.mark(MARK)

    def power_cut(key: str, value: str) -> None:  # dies inside the outbox's transaction
        raise KeyboardInterrupt

    monkeypatch.setattr(outbox, "_set_mark", power_cut)
    with pytest.raises(KeyboardInterrupt):
        upload.step(0.0)
    monkeypatch.undo()
    assert len(outbox) == 0
    assert outbox.mark(MARK) == before
    close(buffer, outbox)
    upload, buffer, outbox = uploader(tmp_path, batch_samples=16)
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in range(40)]


CHILD = """
import sys, time
from pathlib import Path
from edge_agent import data_upload
from edge_agent.buffer import SampleBuffer
from edge_agent.config import DataUploadConfig
from edge_agent.data_upload import DataUploader
data_upload.STEP_BUDGET_S = 0.0  # one batch a look: a line per batch
from edge_agent.metrics import EdgeMetrics
from edge_agent.outbox import Outbox
tmp = Path(sys.argv[1])
upload = DataUploader(
    DataUploadConfig(enabled=True, batch_samples=7, max_queued_batches=10_000, from_start=True),
    buffer=SampleBuffer(tmp / "buffer.db"),
    outbox=Outbox(tmp / "outbox.db", max_messages=100_000),
    topic=sys.argv[2], fleet="farm", device_id="pi-1", metrics=EdgeMetrics(),
)
now = 0.0
while True:
    print(upload.step(now), flush=True)
    now += 100
"""


def test_a_kill_9_while_uploading_neither_loses_nor_repeats_a_sample(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db")
    buffer.extend(labelled(range(3000)))
    buffer.close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), TOPIC],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for _ in range(50):  # 50 batches queued; the child goes on while we read
        assert child.stdout.readline().strip() == "1"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    killed_with = len(Outbox(tmp_path / "outbox.db"))
    assert 0 < killed_with < 3000 // 7  # killed part-way
    upload, buffer, outbox = uploader(
        tmp_path, outbox_messages=100_000, batch_samples=7, max_queued_batches=10_000
    )
    drain(upload)
    messages = sent(outbox)
    assert values(messages) == [float(v) for v in range(3000)]
    assert len({m.envelope.id for m in messages}) == len(messages)


def test_message_ids_name_the_samples_they_carry(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path / "a", batch_samples=10)
    buffer.extend(labelled(range(25)))
    drain(upload)
    ids = [e.message_id for e in outbox.pending()]
    assert ids[0] == data_batch_id("farm", "pi-1", buffer.instance, "imu", (1, 10))
    assert len(set(ids)) == 3
    close(buffer, outbox)

    # the same buffer, its upload state lost: the same samples come out under the same ids
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "buffer.db", tmp_path / "b" / "buffer.db")
    upload, buffer, outbox = uploader(tmp_path / "b", batch_samples=10)
    drain(upload)
    assert [e.message_id for e in outbox.pending()] == ids

    # a new buffer file numbers its samples from 1 again, but its batches are new messages
    upload, buffer, outbox = uploader(tmp_path / "c", batch_samples=10)
    buffer.extend(labelled(range(25)))
    drain(upload)
    assert set(e.message_id for e in outbox.pending()).isdisjoint(ids)


def test_without_from_start_only_samples_collected_after_opting_in_go(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "buffer.db")
    buffer.extend(labelled(range(20)))
    buffer.close()
    upload, buffer, outbox = uploader(tmp_path, from_start=False)
    buffer.extend(labelled(range(20, 30)))
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in range(20, 30)]

    DataUploader.forget(outbox)  # the owner opts out; what was queued before still goes
    buffer.extend(labelled(range(30, 40)))
    close(buffer, outbox)
    upload, buffer, outbox = uploader(tmp_path, from_start=False)
    buffer.extend(labelled(range(40, 45)))
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in [*range(20, 30), *range(40, 45)]]


def test_a_replaced_buffer_file_starts_the_upload_over(tmp_path: Path) -> None:
    upload, buffer, outbox = uploader(tmp_path, batch_samples=100)
    buffer.extend(labelled(range(50)))
    drain(upload)
    close(buffer, outbox)
    (tmp_path / "buffer.db").unlink()
    upload, buffer, outbox = uploader(tmp_path, batch_samples=100)
    buffer.extend(labelled(range(100, 110)))  # positions 1-10 again, below the old 50
    drain(upload)
    assert values(sent(outbox)) == [float(v) for v in [*range(50), *range(100, 110)]]


def test_a_damaged_state_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.set_mark(MARK, "{not json")
    outbox.close()
    with pytest.raises(ValidationError, match="unreadable data upload state"):
        uploader(tmp_path)


MINIMAL = """
device_id: pi-7
mqtt_url: mqtt://broker:1883
model: {name: har, keys_dir: /etc/fleetlearn/keys}
collectors: [{kind: replay, dataset: watch, subject: 3}]
"""


def test_upload_is_off_by_default_and_configured_strictly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(MINIMAL)
    config = load_edge_config(path)
    assert config.data_upload.enabled is False
    assert config.data_upload.labelled_only is True
    monkeypatch.setenv("FLEETLEARN_EDGE__DATA_UPLOAD__ENABLED", "true")
    monkeypatch.setenv("FLEETLEARN_EDGE__DATA_UPLOAD__SAMPLE_SHAPE", "[6, 100]")
    config = load_edge_config(path)
    assert config.data_upload.enabled
    assert config.data_upload.sample_shape == [6, 100]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{enabled: true, batch_samples: 64, max_samples_per_hour: 10}", "below batch_samples"),
        ("{enabled: true, max_queued_batches: 600}", "more than half of outbox.max_messages"),
        ("{enabled: true, streams: [a/b]}", "stream names"),
        ("{enabled: true, streams: []}", "at least one stream"),
        ("{enabled: true, sample_shape: [6, 0]}", "dimensions"),
        ("{enabled: true, interval: 5}", "interval"),
    ],
)
def test_bad_upload_settings_name_the_field(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(f"{MINIMAL}data_upload: {section}\n")
    with pytest.raises(ConfigError, match=message):
        load_edge_config(path)


def test_collector_streams_must_fit_a_data_batch_when_every_stream_goes(tmp_path: Path) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(
        MINIMAL.replace("subject: 3}", "subject: 3, stream: 'wrist imu'}")
        + "data_upload: {enabled: true}\n"
    )
    with pytest.raises(ConfigError, match="'wrist imu'"):
        load_edge_config(path)
    path.write_text(path.read_text().replace("{enabled: true}", "{enabled: true, streams: [x]}"))
    assert load_edge_config(path).data_upload.streams == ["x"]


def test_the_commented_example_in_device_example_yaml_is_valid(tmp_path: Path) -> None:
    lines = (ROOT / "infra" / "edge" / "device.example.yaml").read_text().splitlines()
    start = lines.index("# data_upload:")
    block = ["data_upload:"]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        if line[4:].lstrip().startswith("#"):
            continue  # a comment continued on its own line
        block.append(line[2:])
    path = tmp_path / "device.yaml"
    path.write_text("\n".join([*lines, *block]).replace("enabled: false", "enabled: true"))
    upload = load_edge_config(path).data_upload
    assert upload.enabled
    assert upload.sample_shape == [6, 100]
    assert upload.label_names == list(load("watch").classes)
    assert (upload.batch_samples, upload.max_queued_batches, upload.from_start) == (64, 100, False)
