"""The whole loop on one machine: real edge agents, the real bridge and the real trainer.

Each device is an `EdgeAgent` with its own MQTT connection, buffer, outbox and model store,
replaying one subject's recordings; the bridge carries updates and statuses into the log and
rounds and releases back to MQTT; the trainer validates, aggregates, releases signed models and
announces rounds. The demo only starts them, watches the log and the registry, and at the end
asks every device what it runs and how that model does on the samples it kept back.

Every backend comes from a URL, so the same run goes against Mosquitto, Kafka and S3.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.bridge.bridge import Bridge
from bus.bridge.uplink import ERROR_HEADER
from bus.errors import FleetlearnError, ObjectNotFound, ProtocolError
from bus.log import Consumer, Log, TopicPartition, consume
from bus.mqtt.broker import EmbeddedBroker
from bus.protocol import ModelUpdate, peek_header
from bus.store import open_store
from cloud_trainer.release import Registry, RegistryEntry
from cloud_trainer.release.keys import generate_keypair
from cloud_trainer.service import TrainerService
from edge_agent.agent import EdgeAgent
from edge_agent.releases import load_public_keys, verify_release
from fleetlearn.demo.config import DemoConfig
from fleetlearn.demo.fleet import (
    KEY_ID,
    Endpoints,
    bridge_config,
    device_ids,
    edge_config,
    model_name,
    run_store_url,
    topics_for,
    trainer_config,
)
from fleetlearn.logging_setup import JsonFormatter
from fleetlearn.services.base import cache_dir

log = logging.getLogger(__name__)

SETTLE_S = 90.0  # after the last release, how long devices have to install it


@dataclass(frozen=True)
class RoundRow:
    """One closed round: what crossed the wire and what the released version scores."""

    round: int
    round_id: str
    version: int
    updates: int
    update_bytes: int
    """Wire bytes of the round's updates, as the log holds them (headers included)."""
    dense_bytes: int
    """What the same updates weigh as plain float32 tensors."""
    accuracy: float
    loss: float
    train_loss: float | None
    seconds: float
    files: dict[str, str] = field(repr=False, default_factory=dict)
    """Object keys of the version's files in the store."""


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    samples: int
    version: int | None
    verified: str
    """"yes" when the installed files match the signed manifest, else why not."""
    runtime: str
    heldback: int
    accuracy: float | None
    """On the device's own held-back samples, through its installed model."""


@dataclass(frozen=True)
class Progress:
    phase: str
    round: int
    rounds: int
    reporting: int
    devices: int
    update_bytes: int
    accuracy: float | None


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    run_dir: Path
    model: str
    fleet: str
    baseline_accuracy: float
    rounds: list[RoundRow]
    devices: list[DeviceRow]
    release_files: dict[str, str]
    """File name → where the final release's copy lives (store URL)."""
    store_url: str
    rejected: list[str]
    seconds: float

    @property
    def final_version(self) -> int:
        return self.rounds[-1].version if self.rounds else 0

    @property
    def devices_on_final(self) -> bool:
        return all(d.version == self.final_version and d.verified == "yes" for d in self.devices)

    @property
    def device_accuracy(self) -> float | None:
        scored = [(d.accuracy, d.heldback) for d in self.devices if d.accuracy is not None]
        total = sum(n for _, n in scored)
        return sum(a * n for a, n in scored) / total if total else None


@dataclass
class _Tally:
    """Update records seen in the log, by round id."""

    bytes: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def add(self, round_id: str, size: int) -> None:
        self.bytes[round_id] = self.bytes.get(round_id, 0) + size
        self.count[round_id] = self.count.get(round_id, 0) + 1


class _Worker:
    """A service loop in a thread that keeps the exception that ended it."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target(self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def start(self) -> _Worker:
        self.thread.start()
        return self

    def halt(self, timeout: float = 15.0) -> None:
        self.stop.set()
        self.thread.join(timeout)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_demo(
    config: DemoConfig, on_progress: Callable[[Progress], None] | None = None
) -> DemoResult:
    started = time.monotonic()
    notify = on_progress or (lambda _: None)
    run_id = new_run_id()
    run_dir = (config.workdir or cache_dir() / "demo").resolve() / "runs" / run_id
    with ExitStack() as stack:
        ends = _endpoints(config, run_id, run_dir, stack)
        stack.enter_context(_log_file(run_dir / "demo.log"))
        bridge = Bridge(bridge_config(ends)).start()
        stack.callback(bridge.close)
        stack.callback(_Worker("bridge", bridge.run).start().halt)

        agents = [
            EdgeAgent(edge_config(config, ends, device, subject))
            for device, subject in device_ids(config)
        ]
        for agent in agents:
            stack.callback(agent.close, drain_s=2.0)
            agent.start()
        _wait_collected(agents, config, started, notify)

        trainer = TrainerService(trainer_config(config, ends)).start()
        stack.callback(trainer.close)
        trainer_worker = _Worker("trainer", trainer.run).start()
        stack.callback(trainer_worker.halt)
        device_workers = [_Worker(a.config.device_id, a.run).start() for a in agents]

        registry = Registry(open_store(ends.store_url))
        model = model_name(config)
        observer = _observer(trainer.log, ends.topics.update, run_id)
        stack.callback(observer.close)
        tally = _Tally()
        baseline = registry.get(model, 0).metrics["accuracy"]
        closed_at = [time.monotonic()]  # when each version appeared; [0] = the first round's start
        latest = baseline
        while True:
            _read_updates(observer, tally)
            _check_alive(trainer_worker, device_workers)
            coordinator = trainer.coordinator
            assert coordinator is not None
            while len(closed_at) <= coordinator.version:  # recorded a moment after counted
                entry = _entry(registry, model, len(closed_at))
                if entry is None:
                    break
                closed_at.append(time.monotonic())
                latest = entry.metrics["accuracy"]
            finished = not trainer_worker.thread.is_alive() and trainer.finished
            notify(
                Progress(
                    "settling" if finished else "training",
                    min(coordinator.version + 1, config.rounds),
                    config.rounds,
                    0 if finished else coordinator.accepted,
                    len(agents),
                    sum(tally.bytes.values()),
                    latest,
                )
            )
            if finished:
                break
            _check_time(config, started, f"round {coordinator.version + 1} of {config.rounds}")
            time.sleep(0.25)
        _settle(agents, config.rounds, started, config)
        for worker in device_workers:
            worker.halt()
        _read_all(trainer.log, observer, ends.topics.update, tally)
        dense = sum(v.nbytes for v in coordinator.model.values() if v.dtype.kind == "f")
        rows = [
            _round_row(registry.get(model, v), tally, dense, closed_at[v] - closed_at[v - 1])
            for v in range(1, config.rounds + 1)
        ]
        devices = [_device_row(agent) for agent in agents]
        store = open_store(ends.store_url)
        files = rows[-1].files if rows else {}
        return DemoResult(
            config=config,
            run_dir=run_dir,
            model=model,
            fleet=ends.fleet,
            baseline_accuracy=baseline,
            rounds=rows,
            devices=devices,
            release_files={name: store.url_for(key) for name, key in sorted(files.items())},
            store_url=ends.store_url,
            rejected=_dead_letters(trainer.log, ends.topics.dlq),
            seconds=time.monotonic() - started,
        )


# -- set-up ---------------------------------------------------------------------------------------


def _endpoints(config: DemoConfig, run_id: str, run_dir: Path, stack: ExitStack) -> Endpoints:
    run_dir.mkdir(parents=True)
    trainer_keys = generate_keypair(run_dir / "trainer", KEY_ID)
    keys_dir = run_dir / "keys"  # what every device holds: the public key alone
    keys_dir.mkdir()
    shutil.copy(trainer_keys.public, keys_dir / trainer_keys.public.name)
    mqtt_url = config.mqtt_url
    if mqtt_url is None:
        mqtt_url = stack.enter_context(EmbeddedBroker(data_dir=run_dir / "broker")).url
    store_url = (
        run_store_url(config.store_url, run_id)
        if config.store_url
        else (run_dir / "store").as_uri()
    )
    return Endpoints(
        run_id=run_id,
        run_dir=run_dir,
        fleet=f"demo-{run_id}",
        mqtt_url=mqtt_url,
        log_url=config.log_url or f"sqlite://{run_dir}/log.db",
        store_url=store_url,
        topics=topics_for(run_id, shared_log=config.log_url is not None),
        private_key=trainer_keys.private,
        keys_dir=keys_dir,
    )


@contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """Every part's structured log to one file of the run, not over the live display."""
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _wait_collected(
    agents: list[EdgeAgent], config: DemoConfig, started: float, notify: Callable[..., None]
) -> None:
    """Devices replay their recordings before the first round, as a fleet that has been
    collecting for a while would have."""
    while True:
        done = sum(all(_replayed(c) for c in a.collectors) for a in agents)
        notify(Progress("collecting", 0, config.rounds, done, len(agents), 0, None))
        if done == len(agents):
            return
        _check_time(config, started, "devices collecting their recordings")
        time.sleep(0.1)


def _replayed(collector: Any) -> bool:
    index, rows = getattr(collector, "index", None), getattr(collector, "__len__", None)
    return index is not None and rows is not None and index >= rows()


# -- watching -------------------------------------------------------------------------------------


def _observer(log_: Log, topic: str, run_id: str) -> Consumer:
    consumer = log_.consumer(f"demo-observer-{run_id}")
    consumer.assign([(topic, p, 0) for p in sorted(log_.end_offsets(topic))])
    return consumer


def _read_updates(consumer: Consumer, tally: _Tally, limit: int = 500) -> None:
    for _ in range(limit):
        record = consumer.poll(0)
        if record is None:
            return
        try:
            header = peek_header(record.value)
        except ProtocolError:
            continue  # the trainer dead-letters it; the tally counts updates only
        if isinstance(header, ModelUpdate):
            tally.add(header.round_id, len(record.value))


def _read_all(log_: Log, consumer: Consumer, topic: str, tally: _Tally) -> None:
    """Read the update topic to its end (bounded in time), so every round's bytes count."""
    ends = log_.end_offsets(topic)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _read_updates(consumer, tally)
        positions = consumer.position([TopicPartition(topic, p) for p in ends])
        if all((positions[TopicPartition(topic, p)] or 0) >= end for p, end in ends.items()):
            return
        time.sleep(0.05)


def _round_row(entry: RegistryEntry, tally: _Tally, dense: int, seconds: float) -> RoundRow:
    round_id = entry.lineage.round_id or ""
    updates = len(entry.lineage.update_ids)
    return RoundRow(
        round=entry.version,
        round_id=round_id,
        version=entry.version,
        updates=updates,
        update_bytes=tally.bytes.get(round_id, 0),
        dense_bytes=dense * updates,
        accuracy=entry.metrics["accuracy"],
        loss=entry.metrics["loss"],
        train_loss=entry.metrics.get("train_loss"),
        seconds=seconds,
        files=dict(entry.files),
    )


def _entry(registry: Registry, model: str, version: int) -> RegistryEntry | None:
    try:
        return registry.get(model, version)
    except ObjectNotFound:
        return None


def _check_alive(trainer: _Worker, devices: list[_Worker]) -> None:
    for worker in (trainer, *devices):
        if worker.error is not None:
            raise FleetlearnError(f"{worker.thread.name} stopped: {worker.error}") from worker.error


def _check_time(config: DemoConfig, started: float, doing: str) -> None:
    if time.monotonic() - started > config.timeout_s:
        raise FleetlearnError(f"the demo gave up after {config.timeout_s:.0f} s, at {doing}")


def _settle(agents: list[EdgeAgent], version: int, started: float, config: DemoConfig) -> None:
    """Give every device time to verify and install the last release."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if all(_version(a) == version for a in agents):
            return
        _check_time(config, started, f"devices installing v{version}")
        time.sleep(0.1)


def _version(agent: EdgeAgent) -> int | None:
    active = agent.models.active
    return None if active is None else active.version


def _device_row(agent: EdgeAgent) -> DeviceRow:
    """The device's own view: its installed version checked against the signed manifest, and
    that model's accuracy on the newest samples it kept out of training."""
    config = agent.config
    rows = len(agent.buffer)
    active = agent.models.active
    predictor = agent.models.predictor
    held = agent.buffer.newest(config.training.holdout)
    accuracy = None
    if predictor is not None and held:
        features = np.stack([s.features for s in held])
        labels = np.array([s.label for s in held])
        accuracy = float(np.mean(predictor.classify(features).classes == labels))
    return DeviceRow(
        device_id=config.device_id,
        samples=rows,
        version=None if active is None else active.version,
        verified=_verified(agent),
        runtime="-" if predictor is None else predictor.runtime,
        heldback=len(held),
        accuracy=accuracy,
    )


def _verified(agent: EdgeAgent) -> str:
    active = agent.models.active
    if active is None:
        return "no model"
    try:
        files = {
            f.name: (active.directory / f.name).read_bytes()
            for f in active.manifest.files
            if (active.directory / f.name).is_file()
        }
        verify_release(
            active.manifest, files, load_public_keys(agent.config.model.keys_dir), required=files
        )
    except (FleetlearnError, OSError) as exc:
        return str(exc)
    return "yes"


def _dead_letters(log_: Log, topic: str) -> list[str]:
    """The reasons given for every message dead-lettered during the run."""
    total = sum(log_.end_offsets(topic).values())
    if total == 0:
        return []
    consumer = log_.consumer(f"demo-dlq-{time.time_ns()}")
    consumer.assign([(topic, p, 0) for p in sorted(log_.end_offsets(topic))])
    records = consume(consumer, total, 10)
    consumer.close()
    return [(r.header(ERROR_HEADER) or b"").decode(errors="replace") for r in records]
