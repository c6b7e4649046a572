"""The edge agent against a real Mosquitto: it trains when a round is announced, keeps every
update through a kill -9 and through a broker outage, and refuses a bad release while the old
model keeps serving."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.mqtt import connect_mqtt
from bus.protocol import (
    CodecName,
    CodecSpec,
    Command,
    CommandName,
    ModelUpdate,
    RoundAnnouncement,
    Sampling,
    Status,
    TrainingConfig,
    encode_message,
    encode_update,
)
from bus.topics import cmd_topic, default_prefix, release_topic, rounds_topic, update_topic
from edge_agent.outbox import Outbox
from fleetlearn.services.mosquitto import MosquittoService
from models.registry import build_model
from models.release import encode_release, model_files, signed_manifest
from tests.integration.edge_helpers import (
    ROOT,
    AgentProcess,
    Watcher,
    eventually,
    unique,
    write_config,
)
from tests.unit.edge_agent.release_helpers import KEY_ID, write_public_key

pytestmark = pytest.mark.integration

KEY = Ed25519PrivateKey.generate()
MODEL = "har"
SENSOR = {"in_channels": 6, "num_classes": 7, "channels": [8, 16]}


def device(
    tmp_path: Path, broker_url: str, *, fleet: str, device_id: str = "pi-1", **extra: Any
) -> Path:
    write_public_key(KEY, tmp_path / "keys")
    fields: dict[str, Any] = {
        "device_id": device_id,
        "fleet": fleet,
        "mqtt_url": broker_url,
        "data_dir": tmp_path / "data",
        "heartbeat_s": 0.5,
        "model": {"name": MODEL, "keys_dir": tmp_path / "keys", "runtime": "onnx"},
        "training": {"min_samples": 32, "holdout": 16, "gate": {"max_cpu_percent": 100}},
        "collectors": [
            {"kind": "replay", "dataset": "watch", "subject": 1, "rate_hz": 400, "loop": True}
        ],
    }
    fields.update(extra)
    return write_config(tmp_path / "device.yaml", **fields)


def release(tmp_path: Path, version: int, *, poison: bool = False) -> bytes:
    torch.manual_seed(version)
    module = build_model("cnn1d", SENSOR)
    if poison:
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(float("nan"))
    files = model_files(
        module,
        architecture="cnn1d",
        config=SENSOR,
        example=np.zeros((1, 6, 100), np.float32),
        directory=tmp_path / f"release-v{version}",
    )
    manifest = signed_manifest(
        fleet="x", model=MODEL, version=version, files=files, key=KEY, key_id=KEY_ID
    )
    return encode_release(manifest, files)


def announce(broker_url: str, fleet: str, round_id: str, *, base_version: int = 1) -> None:
    announcement = RoundAnnouncement(
        fleet=fleet,
        round_id=round_id,
        model=MODEL,
        base_version=base_version,
        deadline=time.time() + 300,
        training=TrainingConfig(
            epochs=1, batch_size=16, learning_rate=0.05, codec=CodecSpec(name=CodecName.FP16)
        ),
        sampling=Sampling(devices=("pi-1",)),
    )
    retain(broker_url, rounds_topic(default_prefix(fleet)), encode_message(announcement))


def retain(broker_url: str, topic: str, payload: bytes) -> None:
    send(broker_url, topic, payload, retain=True)


def send(broker_url: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = connect_mqtt(broker_url, client_id=unique("cloud"))
    client.publish(topic, payload, retain=retain).wait(10)
    client.close()


def latest_status(watcher: Watcher) -> Status | None:
    statuses = [m.envelope for m in watcher.of("status")]
    return statuses[-1] if statuses else None  # type: ignore[return-value]


def status_says(watcher: Watcher, check: Any, timeout: float) -> bool:
    def ok() -> bool:
        status = latest_status(watcher)
        return status is not None and bool(check(status))

    return eventually(ok, timeout)


def test_round_update_and_a_rejected_release(tmp_path: Path, mosquitto: Any) -> None:
    fleet = unique("farm")
    prefix = default_prefix(fleet)
    watcher = Watcher(mosquitto.url, f"{prefix}/#")
    retain(mosquitto.url, release_topic(prefix, MODEL), release(tmp_path, 1))
    config = device(tmp_path, mosquitto.url, fleet=fleet)
    agent = AgentProcess(config)
    try:
        assert status_says(watcher, lambda s: s.model_version == 1 and s.buffer_rows > 48, 60), (
            agent.tail()
        )
        announce(mosquitto.url, fleet, "r1")
        assert eventually(lambda: bool(watcher.of("update")), 90), agent.tail()
        update = watcher.of("update")[0]
        header = update.envelope
        assert isinstance(header, ModelUpdate)
        assert (header.device_id, header.round_id, header.base_version) == ("pi-1", "r1", 1)
        assert header.num_examples >= 32
        assert header.codec.name is CodecName.FP16
        expected = build_model("cnn1d", SENSOR).state_dict()
        assert set(update.tensors) == set(expected)
        assert any(np.abs(v).max() > 0 for v in update.tensors.values())  # it really trained

        retain(mosquitto.url, release_topic(prefix, MODEL), release(tmp_path, 2, poison=True))
        assert status_says(
            watcher,
            lambda s: s.rejected_release is not None and s.rejected_release.version == 2,
            60,
        ), agent.tail()
        status = latest_status(watcher)
        assert status is not None
        assert status.model_version == 1  # the old model still serves
        assert status.rejected_release is not None
        assert "non-finite" in status.rejected_release.reason

        retain(mosquitto.url, release_topic(prefix, MODEL), release(tmp_path, 3))
        assert status_says(watcher, lambda s: s.model_version == 3, 60), agent.tail()
        rollback = Command(fleet=fleet, device_id="pi-1", command=CommandName.ROLLBACK)
        send(mosquitto.url, cmd_topic(prefix, "pi-1"), encode_message(rollback))
        assert status_says(watcher, lambda s: s.model_version == 1, 30), agent.tail()
        assert watcher.undecodable == []
    finally:
        assert agent.stop() == 0, agent.tail()
        watcher.close()
    # the round is remembered: a restarted agent does not answer r1 again
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetlearn.cli",
            "edge",
            "predict",
            "--config",
            str(config),
            "--buffered",
            "8",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "model v1 (onnxruntime): " in predicted.stderr
    assert len(predicted.stdout.splitlines()) == 8


def test_a_round_read_before_its_base_release_waits_for_it(tmp_path: Path, mosquitto: Any) -> None:
    """The round and the release are retained on two topics, read in either order."""
    fleet = unique("farm")
    prefix = default_prefix(fleet)
    watcher = Watcher(mosquitto.url, f"{prefix}/#")
    agent = AgentProcess(device(tmp_path, mosquitto.url, fleet=fleet))
    try:
        assert status_says(watcher, lambda s: s.buffer_rows > 48, 60), agent.tail()
        announce(mosquitto.url, fleet, "r1")  # its base, v1, is not out yet
        agent.wait_logged("training deferred", 30)
        time.sleep(1.5)
        assert watcher.of("update") == []
        retain(mosquitto.url, release_topic(prefix, MODEL), release(tmp_path, 1))
        assert eventually(lambda: bool(watcher.of("update")), 90), agent.tail()
        header = watcher.of("update")[0].envelope
        assert isinstance(header, ModelUpdate)
        assert (header.round_id, header.base_version) == ("r1", 1)
        deferred = agent.logged("training deferred")
        assert [d["reason"] for d in deferred] == ["waiting for base version 1"]
    finally:
        assert agent.stop() == 0, agent.tail()
        watcher.close()


def queued_updates(data_dir: Path, fleet: str, count: int, size: int) -> set[str]:
    """Updates as training leaves them: encoded, kept in the agent's outbox."""
    outbox = Outbox(data_dir / "outbox.db")
    ids = set()
    rng = np.random.default_rng(0)
    for i in range(count):
        header = ModelUpdate(
            fleet=fleet,
            device_id="pi-1",
            round_id=f"r{i}",
            model=MODEL,
            base_version=1,
            num_examples=10,
            codec=CodecSpec(name=CodecName.FP32),
        )
        payload, _ = encode_update(header, {"w": rng.normal(size=size).astype(np.float32)})
        outbox.put(update_topic(default_prefix(fleet), "pi-1"), payload, header.id)
        ids.add(header.id)
    outbox.close()
    return ids


def test_sigkill_while_publishing_loses_no_update(tmp_path: Path, mosquitto: Any) -> None:
    fleet = unique("farm")
    prefix = default_prefix(fleet)
    sent = queued_updates(tmp_path / "data", fleet, 400, 25_000)  # 100 KB each
    watcher = Watcher(mosquitto.url, f"{prefix}/devices/#")
    config = device(tmp_path, mosquitto.url, fleet=fleet, collectors=[], outbox={"window": 4})
    agent = AgentProcess(config)
    try:
        assert eventually(lambda: len(watcher.of("update")) >= 20, 60), agent.tail()
        agent.kill()
        assert eventually(  # the Last Will: the broker says the device is gone
            lambda: any(
                isinstance(m.envelope, Status) and not m.envelope.online
                for m in watcher.of("status")
            ),
            30,
        )
        before_restart = {m.envelope.id for m in watcher.of("update")}
        assert before_restart < sent  # killed mid-way
        agent = AgentProcess(config)
        assert eventually(lambda: {m.envelope.id for m in watcher.of("update")} >= sent, 120), (
            agent.tail()
        )
        assert eventually(lambda: len(Outbox(tmp_path / "data" / "outbox.db")) == 0, 10)
    finally:
        agent.stop()
        watcher.close()


def test_updates_made_while_the_broker_is_down_arrive_after(tmp_path: Path) -> None:
    broker = MosquittoService(tmp_path / "broker")
    broker.start()
    fleet = unique("farm")
    prefix = default_prefix(fleet)
    retain(broker.url, release_topic(prefix, MODEL), release(tmp_path, 1))
    watcher = Watcher(
        broker.url, f"{prefix}/devices/+/update", client_id="cloud-watcher", keepalive=2
    )
    config = device(tmp_path, f"{broker.url}?keepalive=2", fleet=fleet)
    agent = AgentProcess(config)
    try:
        agent.wait_logged("model installed", 60)
        assert eventually(lambda: bool(agent.logged("connected")), 30)
        announce(broker.url, fleet, "r-offline")
        agent.wait_logged("training started", 60)
        broker.stop()  # the device trains on, offline
        agent.wait_logged("update queued", 90)
        time.sleep(1)
        assert watcher.of("update") == []
        broker.start()  # same port and data: the watcher's session kept its subscription
        assert eventually(lambda: len(watcher.of("update")) == 1, 60), agent.tail()
        update = watcher.of("update")[0].envelope
        assert isinstance(update, ModelUpdate)
        assert update.round_id == "r-offline"
    finally:
        agent.stop()
        watcher.close()
        broker.stop()


def test_an_update_no_subscriber_took_waits_for_the_bridge(tmp_path: Path, mosquitto: Any) -> None:
    """After a broker restart Mosquitto 2.0 has lost the bridges' shared subscriptions until they
    subscribe again, and acknowledges an update nobody subscribes to with reason code 16 and
    drops it. The agent keeps such an update, backs off, and sends it once a bridge is back."""
    fleet = unique("farm")
    prefix = default_prefix(fleet)
    sent = queued_updates(tmp_path / "data", fleet, 3, 1000)
    outbox_path = tmp_path / "data" / "outbox.db"
    config = device(tmp_path, mosquitto.url, fleet=fleet, collectors=[])
    agent = AgentProcess(config)
    bridge = None
    try:
        paused = agent.wait_logged(
            "no subscriber took the message; kept in the outbox, topic paused", 60
        )
        assert paused["topic"] == update_topic(prefix, "pi-1")
        assert len(Outbox(outbox_path)) == 3  # acknowledged by the broker, yet kept
        bridge = Watcher(mosquitto.url, f"$share/bridges/{prefix}/devices/+/update")
        assert eventually(lambda: len(Outbox(outbox_path)) == 0, 60), agent.tail()
        assert eventually(lambda: len(bridge.of("update")) >= 3, 10)
        time.sleep(1.0)  # a second copy would have come by now
        ids = [m.envelope.id for m in bridge.of("update")]
        assert sorted(ids) == sorted(sent)  # every update, exactly once
        assert agent.logged("a subscriber took the message; topic resumed")
    finally:
        assert agent.stop() == 0, agent.tail()
        if bridge is not None:
            bridge.close()
