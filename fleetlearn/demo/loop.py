"""The interim demo loop: devices train on real data, updates cross MQTT and the log, the
aggregator averages them, and each new global model lands in the object store.

Every backend comes from a URL, so the same loop runs on the embedded default (a local broker,
SQLite, a directory) or against Mosquitto, Kafka and S3.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bus.bridge.bridge import Bridge
from bus.bridge.config import BridgeConfig
from bus.bridge.uplink import ERROR_HEADER
from bus.errors import ProtocolError
from bus.log import Consumer, Log, consume, open_log
from bus.mqtt import MqttClient, connect_mqtt
from bus.mqtt.broker import EmbeddedBroker
from bus.protocol import (
    CodecName,
    CodecSpec,
    ModelUpdate,
    decode_message,
    encode_update,
    write_tensors,
)
from bus.protocol.codecs import Residual
from bus.store import ObjectStore, open_store
from bus.topics import KAFKA_DLQ, KAFKA_UPDATES, default_prefix, update_topic
from fleetlearn.demo.aggregate import WeightedMean
from fleetlearn.demo.data import FleetData, fleet_data
from fleetlearn.demo.logreg import Params, evaluate, init_params, train_local
from fleetlearn.services.base import cache_dir


class DemoConfig(BaseModel):
    """What the demo runs; every field is a `fleetlearn demo` option."""

    model_config = ConfigDict(extra="forbid")

    devices: int = Field(10, ge=1, le=50, description="simulated devices, one data shard each")
    rounds: int = Field(5, ge=1, le=100, description="federated rounds")
    codec: CodecName = Field(CodecName.INT8, description="update codec on the wire")
    topk_ratio: float = Field(0.25, gt=0, le=1, description="share of entries top-k sends")
    compress: bool = Field(True, description="zstd-compress update payloads")
    epochs: int = Field(2, ge=1, description="local epochs per round")
    learning_rate: float = Field(0.1, gt=0)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    fleet: str = "demo"
    mqtt_url: str | None = Field(None, description="broker; None starts an embedded one")
    log_url: str | None = Field(None, description="log; None uses sqlite in the work directory")
    store_url: str | None = Field(None, description="store; None uses a directory")
    workdir: Path | None = Field(
        None, description="where the embedded log and store live; default ~/.cache/fleetlearn/demo"
    )
    round_timeout_s: float = Field(60.0, gt=0)


@dataclass(frozen=True)
class RoundResult:
    round: int
    updates: int
    duplicates: int
    wire_bytes: int
    dense_bytes: int
    loss: float
    accuracy: float
    model_url: str


@dataclass(frozen=True)
class DemoResult:
    baseline_accuracy: float
    rounds: list[RoundResult]
    rejected: list[str]


@dataclass
class _Bus:
    mqtt_url: str
    log_url: str
    log: Log
    store: ObjectStore


@contextmanager
def _open_bus(config: DemoConfig) -> Iterator[_Bus]:
    with ExitStack() as stack:
        workdir = config.workdir or cache_dir() / "demo"
        mqtt_url = config.mqtt_url
        if mqtt_url is None:
            mqtt_url = stack.enter_context(EmbeddedBroker(data_dir=workdir / "broker")).url
        log_url = config.log_url or f"sqlite://{workdir.resolve()}/log.db"
        log = open_log(log_url)
        stack.callback(log.close)
        store = open_store(config.store_url or (workdir / "store").resolve().as_uri())
        yield _Bus(mqtt_url, log_url, log, store)


def run_demo(
    config: DemoConfig, on_round: Callable[[RoundResult], None] | None = None
) -> DemoResult:
    data = fleet_data(devices=config.devices, test_fraction=0.2, seed=config.seed)
    params = init_params(data.features)
    baseline = evaluate(params, data.test_x, data.test_y)[1]
    prefix = default_prefix(config.fleet)
    run_id = f"{config.seed}-{int(time.time())}"
    results: list[RoundResult] = []
    with _open_bus(config) as bus, ExitStack() as stack:
        bus.log.create_topics({KAFKA_UPDATES: 3})
        _start_bridge(bus, config, run_id, stack)
        devices = [_device(bus.mqtt_url, i, run_id, stack) for i in range(config.devices)]
        residuals: list[Residual | None] = [None] * config.devices  # top-k error feedback
        consumer = bus.log.consumer(f"demo-aggregator-{run_id}")
        stack.callback(consumer.close)
        consumer.subscribe([KAFKA_UPDATES])
        for number in range(1, config.rounds + 1):
            round_id = f"{run_id}-round-{number}"  # unique across runs sharing a work directory
            wire = _train_and_publish(
                config, data, params, devices, residuals, prefix, round_id, number
            )
            mean, duplicates = _aggregate(consumer, round_id, number - 1, config)
            params = {name: params[name] + delta for name, delta in mean.result().items()}
            loss, accuracy = evaluate(params, data.test_x, data.test_y)
            url = _save_model(bus.store, number, params)
            dense = sum(v.nbytes for v in params.values()) * config.devices
            result = RoundResult(number, mean.count, duplicates, wire, dense, loss, accuracy, url)
            results.append(result)
            if on_round is not None:
                on_round(result)
        return DemoResult(baseline, results, _dead_letters(bus.log))


def _start_bridge(bus: _Bus, config: DemoConfig, run_id: str, stack: ExitStack) -> None:
    """The real bridge, in a thread: MQTT acks only after the log has each update."""
    settings = BridgeConfig(
        mqtt_url=bus.mqtt_url,
        log_url=bus.log_url,
        fleet=config.fleet,
        client_id=f"demo-bridge-{run_id}",
        partitions=3,
        downlink=False,
    )
    bridge = Bridge(settings).start()
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), name="bridge", daemon=True)
    thread.start()

    def shut_down() -> None:
        stop.set()
        thread.join(10)
        bridge.close()

    stack.callback(shut_down)


def _dead_letters(log: Log) -> list[str]:
    """The reasons the bridge gave for every message it dead-lettered during the demo."""
    total = sum(log.end_offsets(KAFKA_DLQ).values())
    if total == 0:
        return []
    consumer = log.consumer(f"demo-dlq-{time.time_ns()}")
    consumer.subscribe([KAFKA_DLQ])
    records = consume(consumer, total, 10)
    consumer.close()
    return [(r.header(ERROR_HEADER) or b"").decode(errors="replace") for r in records]


def _device(mqtt_url: str, index: int, run_id: str, stack: ExitStack) -> MqttClient:
    client = connect_mqtt(mqtt_url, client_id=f"device-{index:02d}-{run_id}")
    stack.callback(client.close)
    return client


def _train_and_publish(
    config: DemoConfig,
    data: FleetData,
    params: Params,
    devices: list[MqttClient],
    residuals: list[Residual | None],
    prefix: str,
    round_id: str,
    number: int,
) -> int:
    """Each device trains from the global model and publishes its delta; returns wire bytes."""
    rng = np.random.default_rng(config.seed * 1000 + number)
    codec = CodecSpec(
        name=config.codec, topk_ratio=config.topk_ratio if config.codec is CodecName.TOPK else None
    )
    handles, wire = [], 0
    for index, (client, shard) in enumerate(zip(devices, data.shards, strict=True)):
        local = train_local(
            params,
            shard.x,
            shard.y,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            rng=rng,
        )
        _, accuracy = evaluate(local, shard.x, shard.y)
        header = ModelUpdate(
            fleet=config.fleet,
            device_id=f"device-{index:02d}",
            round_id=round_id,
            model="logreg",
            base_version=number - 1,
            num_examples=len(shard.x),
            codec=codec,
            metrics={"train_accuracy": accuracy},
        )
        delta = {name: local[name] - params[name] for name in params}
        payload, residuals[index] = encode_update(
            header, delta, compress=config.compress, residual=residuals[index]
        )
        wire += len(payload)
        handles.append(client.publish(update_topic(prefix, header.device_id), payload, qos=1))
    for handle in handles:
        handle.wait(30)  # PUBACK: the broker has every update
    return wire


def _aggregate(
    consumer: Consumer, round_id: str, base_version: int, config: DemoConfig
) -> tuple[WeightedMean, int]:
    """Read this round's updates from the log, once each by message id, and average them."""
    mean, seen, duplicates = WeightedMean(), set[str](), 0
    deadline = time.monotonic() + config.round_timeout_s
    while mean.count < config.devices and time.monotonic() < deadline:
        record = consumer.poll(0.5)
        if record is None:
            continue
        try:
            message = decode_message(record.value)
        except ProtocolError:
            continue  # the bridge passes only valid frames; it dead-letters the rest
        update = message.envelope
        if not isinstance(update, ModelUpdate) or (update.round_id, update.base_version) != (
            round_id,
            base_version,
        ):
            continue
        if update.id in seen:
            duplicates += 1
            continue
        seen.add(update.id)
        mean.add(
            {k: v for k, v in message.tensors.items() if v.dtype.kind == "f"}, update.num_examples
        )
        consumer.commit({record.tp: record.offset + 1})
    return mean, duplicates


def _save_model(store: ObjectStore, number: int, params: Params) -> str:
    key = f"models/logreg/v{number}.safetensors"
    store.put(key, write_tensors(params, metadata={"version": str(number)}))
    return store.url_for(key)


def summary(result: DemoResult) -> dict[str, Any]:
    last = result.rounds[-1]
    return {
        "baseline_accuracy": result.baseline_accuracy,
        "final_accuracy": last.accuracy,
        "updates": sum(r.updates for r in result.rounds),
        "rejected": len(result.rejected),
    }
