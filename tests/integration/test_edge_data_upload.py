"""Raw samples from a real edge agent to a real Mosquitto: a device whose owner opted in sends
exactly the samples its replay collector buffered, as DataBatch messages the DDP job accepts,
also across a broker outage; a device with the default config sends none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.protocol import DataBatch, Message, Status
from bus.topics import data_topic, default_prefix
from cloud_trainer.ddp.stream import samples_of
from edge_agent.buffer import SampleBuffer
from edge_agent.outbox import Outbox
from fleetlearn.services.mosquitto import MosquittoService
from models.datasets import load
from tests.integration.edge_helpers import AgentProcess, Watcher, eventually, unique, write_config
from tests.unit.edge_agent.release_helpers import write_public_key

pytestmark = pytest.mark.integration

SUBJECT_ROWS = 561  # subject 1 of the `watch` data set
SAMPLE_SHAPE = (6, 100)  # the DDP job's model.input_shape for `watch` (infra/trainer/ddp.yaml)
CLASSES = list(load("watch").classes)


def device(
    tmp_path: Path,
    broker_url: str,
    *,
    fleet: str,
    device_id: str,
    rate_hz: float = 400,
    **extra: Any,
) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    write_public_key(Ed25519PrivateKey.generate(), tmp_path / "keys")
    fields: dict[str, Any] = {
        "device_id": device_id,
        "fleet": fleet,
        "mqtt_url": broker_url,
        "data_dir": tmp_path / "data",
        "heartbeat_s": 0.5,
        "model": {"name": "har", "keys_dir": tmp_path / "keys", "runtime": "onnx"},
        "training": {"enabled": False},
        "collectors": [
            {"kind": "replay", "dataset": "watch", "subject": 1, "rate_hz": rate_hz, "loop": False}
        ],
    }
    fields.update(extra)
    return write_config(tmp_path / "device.yaml", **fields)


def opted_in(batch_samples: int = 50) -> dict[str, Any]:
    return {
        "enabled": True,
        "sample_shape": list(SAMPLE_SHAPE),
        "label_names": CLASSES,
        "batch_samples": batch_samples,
        "interval_s": 0.3,
    }


def received(watcher: Watcher, device_id: str) -> list[tuple[Message, bytes]]:
    """The device's data batches, each once (a re-delivery carries the same id)."""
    seen: set[str] = set()
    batches = []
    for message, raw in watcher.raw("data", f"/devices/{device_id}/data"):
        if message.envelope.id not in seen:
            seen.add(message.envelope.id)
            batches.append((message, raw))
    return batches


def count(watcher: Watcher, device_id: str) -> int:
    headers = [m.envelope for m, _ in received(watcher, device_id)]
    return sum(h.num_samples for h in headers if isinstance(h, DataBatch))


def buffered_rows(watcher: Watcher, device_id: str) -> set[int]:
    """The buffer sizes the device's status messages reported."""
    statuses = [m.envelope for m in watcher.of("status", f"/devices/{device_id}/status")]
    return {s.buffer_rows for s in statuses if isinstance(s, Status)}


def check_against_the_buffer(batches: list[tuple[Message, bytes]], data_dir: Path) -> None:
    """Every buffered sample arrived once, in order, with its label, in DDP-ready records."""
    buffer = SampleBuffer(data_dir / "buffer.db")
    buffered = buffer.newest(100_000)
    buffer.close()
    assert len(buffered) == SUBJECT_ROWS
    xs, ys = [], []
    for message, raw in batches:
        header = message.envelope
        assert isinstance(header, DataBatch)
        assert header.stream == "default"
        assert header.label_names == tuple(CLASSES)
        x, y = samples_of(raw, SAMPLE_SHAPE)  # what the DDP job does with each record
        assert x.shape[0] == header.num_samples <= 50
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)
    np.testing.assert_array_equal(x.reshape(len(x), -1), np.stack([s.features for s in buffered]))
    assert np.concatenate(ys).tolist() == [int(s.label or 0) for s in buffered]


def test_an_opted_in_device_sends_what_it_buffered_and_a_default_one_nothing(
    tmp_path: Path, mosquitto: Any
) -> None:
    fleet = unique("farm")
    watcher = Watcher(mosquitto.url, f"{default_prefix(fleet)}/devices/#")
    sender = AgentProcess(
        device(
            tmp_path / "pi-1",
            mosquitto.url,
            fleet=fleet,
            device_id="pi-1",
            data_upload=opted_in(),
        )
    )
    silent = AgentProcess(device(tmp_path / "pi-2", mosquitto.url, fleet=fleet, device_id="pi-2"))
    try:
        sender.wait_logged("replay finished", 30)
        assert eventually(lambda: count(watcher, "pi-1") >= SUBJECT_ROWS, 10), sender.tail()
        silent.wait_logged("replay finished", 10)
        assert eventually(  # the default device collected just the same ...
            lambda: SUBJECT_ROWS in buffered_rows(watcher, "pi-2"), 10
        ), silent.tail()
        assert sender.logged("data upload enabled")
    finally:
        assert sender.stop() == 0, sender.tail()
        assert silent.stop() == 0, silent.tail()
        watcher.close()
    batches = received(watcher, "pi-1")
    assert count(watcher, "pi-1") == SUBJECT_ROWS
    check_against_the_buffer(batches, tmp_path / "pi-1" / "data")
    assert watcher.of("data", "/devices/pi-2/data") == []  # ... and sent none of it
    assert silent.logged("data upload enabled") == []
    assert watcher.undecodable == []


def waiting(data_dir: Path, fleet: str) -> int:
    """Data batches in the device's outbox (read beside the running agent: SQLite WAL)."""
    outbox = Outbox(data_dir / "outbox.db")
    try:
        return outbox.totals(data_topic(default_prefix(fleet), "pi-1"))[0]
    finally:
        outbox.close()


def test_samples_collected_while_the_broker_is_down_arrive_after(tmp_path: Path) -> None:
    broker = MosquittoService(tmp_path / "broker")
    broker.start()
    fleet = unique("farm")
    watcher = Watcher(
        broker.url,
        f"{default_prefix(fleet)}/devices/+/data",
        client_id=unique("cloud-watcher"),
        keepalive=2,
    )
    config = device(
        tmp_path / "pi-1",
        f"{broker.url}?keepalive=2",
        fleet=fleet,
        device_id="pi-1",
        rate_hz=150,
        data_upload=opted_in(batch_samples=40),
    )
    agent = AgentProcess(config)
    try:
        agent.wait_logged("connected", 30)
        broker.stop()  # the device collects on, offline: its batches wait in the outbox
        agent.wait_logged("replay finished", 30)
        data_dir = tmp_path / "pi-1" / "data"
        assert eventually(lambda: waiting(data_dir, fleet) >= SUBJECT_ROWS // 40 // 2, 10)
        assert count(watcher, "pi-1") < SUBJECT_ROWS
        broker.start()  # same port and data: the watcher's session kept its subscription
        assert eventually(lambda: count(watcher, "pi-1") >= SUBJECT_ROWS, 30), agent.tail()
    finally:
        assert agent.stop() == 0, agent.tail()
        watcher.close()
        broker.stop()
    assert count(watcher, "pi-1") == SUBJECT_ROWS
    check_against_the_buffer(received(watcher, "pi-1"), data_dir)
    assert waiting(data_dir, fleet) == 0  # every batch acknowledged, so deleted
