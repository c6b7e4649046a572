"""The device daemon: collect into the buffer, train when selected, publish through the outbox,
follow releases, serve the active model, and say how the device is doing.

Offline first: nothing waits for the broker. Collectors write to disk, rounds already announced
train, updates wait in the outbox, and the connection is retried in the background. Every
message from the network is decoded and validated here before it changes anything; a bad one
is logged and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ConnectError, FleetlearnError, ProtocolError, PublishError
from bus.mqtt import MqttClient, MqttMessage, Will
from bus.mqtt.options import MqttOptions
from bus.protocol import Command, CommandName, RoundAnnouncement, Status, decode_message
from bus.protocol import encode_message as encode
from bus.topics import cmd_topic, default_prefix, release_topic, rounds_topic, status_topic
from bus.topics import data_topic as device_data_topic
from bus.topics import update_topic as device_update_topic
from edge_agent.buffer import Sample, SampleBuffer
from edge_agent.collectors import Collector, build_collector
from edge_agent.config import EdgeConfig
from edge_agent.data_upload import DataUploader
from edge_agent.metrics import EdgeMetrics
from edge_agent.model_manager import ModelManager, weights_file
from edge_agent.model_store import ModelStore
from edge_agent.outbox import Outbox, OutboxFullError, OutboxSender
from edge_agent.releases import load_public_keys
from edge_agent.resources import ResourceMonitor, gate_reason
from edge_agent.round_ledger import RoundLedger
from edge_agent.selection import selected

log = logging.getLogger(__name__)

BASE_WAIT_S = 0.5  # how often a round whose base model has not arrived yet looks again

try:
    AGENT_VERSION = importlib.metadata.version("fleetlearn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    AGENT_VERSION = "0+source"


def can_train() -> bool:
    """torch is there (the `edge-train` extra); an inference-only device never imports it."""
    return importlib.util.find_spec("torch") is not None


@dataclass
class _PendingRound:
    announcement: RoundAnnouncement
    next_try: float
    forced: bool = False
    deferred_reason: str = ""


class EdgeAgent:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        monitor: ResourceMonitor | None = None,
        collectors: Sequence[Collector] | None = None,
        metrics: EdgeMetrics | None = None,
    ) -> None:
        self.config = config
        self.prefix = config.prefix or default_prefix(config.fleet)
        self.monitor = monitor or ResourceMonitor()
        self.metrics = metrics or EdgeMetrics()
        self.started = time.monotonic()
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self._db_lock = threading.Lock()  # one SQLite connection per file, shared by threads
        self.buffer = SampleBuffer(
            data / "buffer.db",
            max_rows=config.buffer.max_rows,
            max_bytes=config.buffer.max_bytes,
            synchronous=config.buffer.synchronous,
        )
        self.outbox = Outbox(
            data / "outbox.db",
            max_messages=config.outbox.max_messages,
            max_bytes=config.outbox.max_bytes,
        )
        self.trains = config.training.enabled and can_train()
        self.models = ModelManager(
            ModelStore(data / "models", keep=config.model.keep),
            load_public_keys(config.model.keys_dir),
            model=config.model.name,
            runtime=config.model.runtime,
            train=self.trains,
            held_back=self._held_back,
            health_samples=config.model.health_samples,
            download_timeout_s=config.model.download_timeout_s,
        )
        self.ledger = RoundLedger(data / "rounds.json")
        self.accountant: Any = None
        if self.trains:
            from edge_agent.privacy import PrivacyAccountant

            self.accountant = PrivacyAccountant(
                data / "privacy.json", config.training.privacy_delta
            )
        self.collectors = (
            list(collectors)
            if collectors is not None
            else [build_collector(c, state_dir=data / "collectors") for c in config.collectors]
        )
        self.client = MqttClient(
            MqttOptions.from_url(config.mqtt_url, client_id=f"fleetlearn-edge-{config.device_id}"),
            will=Will(self.status_topic, encode(self._status(online=False)), qos=1),
        )
        self.client.subscribe(release_topic(self.prefix, config.model.name), self._inbound)
        self.client.subscribe(rounds_topic(self.prefix), self._inbound)
        self.client.subscribe(cmd_topic(self.prefix, config.device_id), self._inbound)
        self.sender = OutboxSender(self.outbox, self.client, window=config.outbox.window)
        self.uploader: DataUploader | None = None
        if config.data_upload.enabled:  # raw data leaves the device only when its owner says so
            self.uploader = DataUploader(
                config.data_upload,
                buffer=self.buffer,
                outbox=self.outbox,
                topic=self.data_topic,
                fleet=config.fleet,
                device_id=config.device_id,
                metrics=self.metrics,
            )
        else:
            DataUploader.forget(self.outbox)
        self._events: queue.Queue[MqttMessage] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending: _PendingRound | None = None
        self._last_round: RoundAnnouncement | None = None
        self._training: threading.Thread | None = None
        self._trained: tuple[RoundAnnouncement, Any] | None = None
        self._residual: Any = None
        self._next_connect = 0.0
        self._connect_backoff = 1.0
        self._next_heartbeat = 0.0

    # -- topics and status -----------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return status_topic(self.prefix, self.config.device_id)

    @property
    def update_topic(self) -> str:
        return device_update_topic(self.prefix, self.config.device_id)

    @property
    def data_topic(self) -> str:
        return device_data_topic(self.prefix, self.config.device_id)

    def _status(self, *, online: bool = True) -> Status:
        if not online:  # the Last Will: fixed when connecting, so it says only "offline"
            return Status(
                fleet=self.config.fleet,
                device_id=self.config.device_id,
                online=False,
                model=self.config.model.name,
                agent_version=AGENT_VERSION,
            )
        with self._db_lock:
            rows, size = self.buffer.totals()
            outbox = len(self.outbox)
        reading = self.monitor.read()
        active = self.models.active
        return Status(
            fleet=self.config.fleet,
            device_id=self.config.device_id,
            online=True,
            model=self.config.model.name,
            model_version=None if active is None else active.version,
            buffer_rows=rows,
            buffer_bytes=size,
            outbox_messages=outbox,
            cpu_percent=reading.cpu_percent,
            memory_percent=reading.memory_percent,
            temperature_c=reading.temperature_c,
            on_battery=reading.on_battery,
            agent_version=AGENT_VERSION,
            uptime_s=time.monotonic() - self.started,
            rejected_release=self.models.rejected,
        )

    def status(self) -> Status:
        return self._status()

    # -- samples -----------------------------------------------------------------------------

    def _held_back(self, count: int) -> npt.NDArray[np.float32]:
        with self._db_lock:
            window = self.buffer.window(count)
        return window.features

    def _emitter(self, name: str) -> Any:
        def emit(samples: Sequence[Sample]) -> None:
            with self._db_lock:
                written = self.buffer.extend(samples)
            self.metrics.samples.labels(name).inc(written)

        return emit

    def _run_collector(self, collector: Collector) -> None:
        emit = self._emitter(collector.name)
        while not self._stop.is_set():
            try:
                collector.run(emit, self._stop)
                return
            except Exception as exc:
                self.metrics.collector_errors.labels(collector.name).inc()
                log.exception(
                    "collector failed; restarting it in 5 s",
                    extra={"collector": collector.name, "error": str(exc)},
                )
                self._stop.wait(5)

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> EdgeAgent:
        for collector in self.collectors:
            thread = threading.Thread(
                target=self._run_collector,
                args=(collector,),
                name=f"collector-{collector.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        return self

    def run(self, stop: threading.Event, *, max_seconds: float | None = None) -> None:
        """Until `stop` is set (SIGTERM) or `max_seconds` pass."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.step()
            try:
                message = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._dispatch(message)
            except Exception:  # one message must not end the device's service
                log.exception("message handling failed", extra={"topic": message.topic})

    def step(self) -> None:
        now = time.monotonic()
        self._ensure_connected(now)
        with self._db_lock:
            acked = self.sender.step()
            if self.uploader is not None:
                try:
                    self.uploader.step(now)
                except Exception:  # the upload must not stop the device; it looks again later
                    log.exception("data upload failed")
        if acked:
            self.metrics.updates_sent.inc(acked.count(self.update_topic))
            self.metrics.data_batches_sent.inc(acked.count(self.data_topic))
        self._finish_training()
        self._maybe_train(now)
        if self.client.connected and now >= self._next_heartbeat:
            self.publish_status()
            self._next_heartbeat = now + self.config.heartbeat_s

    def _ensure_connected(self, now: float) -> None:
        """The first connection is ours to retry; after it, paho reconnects by itself."""
        connected = self.client.connected
        self.metrics.connected.set(1 if connected else 0)
        if connected or self._next_connect < 0 or now < self._next_connect:
            return
        try:
            self.client.connect(timeout=5.0)
        except ConnectError as exc:
            log.warning(
                "broker unreachable; working offline",
                extra={"retry_s": self._connect_backoff, "error": str(exc)},
            )
            self._next_connect = now + self._connect_backoff
            self._connect_backoff = min(60.0, self._connect_backoff * 2)
            return
        self._next_connect = -1.0  # connected once: paho owns reconnecting from here
        self._next_heartbeat = 0.0
        log.info("connected", extra={"broker": self.client.options.url})

    def publish_status(self) -> None:
        status = self._status()
        self.metrics.buffer_rows.set(status.buffer_rows)
        self.metrics.outbox_messages.set(status.outbox_messages)
        self.metrics.model_version.set(status.model_version or 0)
        # Not `require_subscriber`: a status is not kept anywhere to be sent again, the next
        # heartbeat replaces it, and the Last Will stands for the device being gone. A status
        # that finds no subscriber (a broker restart, before the bridge subscribed again) is
        # simply superseded; updates and data batches go through the outbox, which keeps them.
        try:
            self.client.publish(self.status_topic, encode(status), qos=1)
        except PublishError as exc:
            log.warning("status not sent", extra={"error": str(exc)})

    def _inbound(self, message: MqttMessage) -> None:
        """paho's thread: hand over and return; the work happens in the agent's loop."""
        try:
            self._events.put_nowait(message)
        except queue.Full:
            log.error("inbound queue full; message dropped", extra={"topic": message.topic})

    def _dispatch(self, message: MqttMessage) -> None:
        if not message.payload:
            return  # a cleared retained message
        if message.topic == release_topic(self.prefix, self.config.model.name):
            outcome = self.models.handle(message.payload)
            self.metrics.releases.labels(outcome.action).inc()
            if outcome.action != "ignored":
                self.publish_status()
            return
        try:
            envelope = decode_message(message.payload).envelope
        except ProtocolError as exc:
            log.warning("bad message dropped", extra={"topic": message.topic, "error": str(exc)})
            return
        if isinstance(envelope, RoundAnnouncement) and message.topic == rounds_topic(self.prefix):
            self._on_round(envelope)
        elif isinstance(envelope, Command) and envelope.device_id == self.config.device_id:
            self._on_command(envelope)
        else:
            log.warning(
                "unexpected message dropped",
                extra={"topic": message.topic, "kind": str(envelope.kind)},
            )

    # -- rounds ------------------------------------------------------------------------------

    def _on_round(self, announcement: RoundAnnouncement, *, forced: bool = False) -> None:
        self._last_round = announcement
        skip = self._skip_reason(announcement, forced=forced)
        if skip:
            self.metrics.rounds.labels("skipped").inc()
            log.info("round skipped", extra={"round": announcement.round_id, "reason": skip})
            return
        self._pending = _PendingRound(announcement, time.monotonic(), forced=forced)

    def _skip_reason(self, announcement: RoundAnnouncement, *, forced: bool) -> str | None:
        if announcement.model != self.config.model.name:
            return f"round for model {announcement.model!r}"
        if announcement.round_id in self.ledger:
            return "already answered"
        if time.time() > announcement.deadline:
            return "deadline passed"
        if not self.trains:
            return "training disabled or torch not installed"
        if not forced and not selected(announcement, self.config.device_id):
            return "not selected"
        if self._training is not None:
            return "still training the previous round"
        return None

    def _maybe_train(self, now: float) -> None:
        pending = self._pending
        if pending is None or self._training is not None or now < pending.next_try:
            return
        announcement = pending.announcement
        if time.time() > announcement.deadline:
            self._pending = None
            self.metrics.rounds.labels("expired").inc()
            log.info("round deadline passed while deferred", extra={"round": announcement.round_id})
            return
        if self.models.store.installed(self.config.model.name, announcement.base_version) is None:
            # The round and its base release are retained on different topics, so a device
            # that (re)connects may read the round first: wait for the release, not skip.
            reason: str | None = f"waiting for base version {announcement.base_version}"
            retry = BASE_WAIT_S
        else:
            reason = (
                None
                if pending.forced
                else gate_reason(self.monitor.read(), self.config.training.gate)
            )
            retry = self.config.training.gate.retry_s
        if reason:
            if reason != pending.deferred_reason:  # counted and logged once per reason
                log.info(
                    "training deferred", extra={"round": announcement.round_id, "reason": reason}
                )
                self.metrics.rounds.labels("deferred").inc()
            pending.deferred_reason = reason
            pending.next_try = now + retry
            return
        self._pending = None
        log.info("training started", extra={"round": announcement.round_id})
        self._training = threading.Thread(
            target=self._train, args=(announcement,), name="local-training", daemon=True
        )
        self._training.start()

    def _train(self, announcement: RoundAnnouncement) -> None:
        """The training thread: everything slow happens here, nothing shared is written."""
        try:
            self._trained = (announcement, self._train_round(announcement))
        except Exception as exc:  # noqa: BLE001 - reported below; the agent keeps running
            self._trained = (announcement, exc)

    def _train_round(self, announcement: RoundAnnouncement) -> Any:
        from edge_agent.round_runner import run_round

        installed = self.models.store.installed(self.config.model.name, announcement.base_version)
        if installed is None:
            return f"base version {announcement.base_version} is not installed"
        weights = weights_file(installed)
        if weights is None:
            return f"release v{announcement.base_version} has no weights file"
        training = self.config.training
        with self._db_lock:
            window = self.buffer.window(training.max_samples, skip=training.holdout)
        if len(window) < training.min_samples:
            return f"{len(window)} samples, fewer than {training.min_samples}"
        if window.labels is None:
            return "buffered samples carry no labels"
        return run_round(
            announcement,
            device_id=self.config.device_id,
            weights=weights,
            window=window,
            accountant=self.accountant,
            residual=self._residual,
            stop=self._stop,
        )

    def _finish_training(self) -> None:
        thread = self._training
        if thread is None or thread.is_alive():
            return
        self._training = None
        finished, self._trained = self._trained, None
        if finished is None:
            return
        announcement, result = finished
        round_id = announcement.round_id
        if isinstance(result, BaseException):
            self.metrics.rounds.labels("failed").inc()
            log.error("local training failed", extra={"round": round_id, "error": str(result)})
            return
        if isinstance(result, str):
            self.metrics.rounds.labels("skipped").inc()
            self.ledger.mark(round_id)
            log.info("round skipped", extra={"round": round_id, "reason": result})
            return
        update, self._residual = result
        try:
            with self._db_lock:
                self.outbox.put(self.update_topic, update.payload, update.message_id)
        except (OutboxFullError, FleetlearnError) as exc:
            self.metrics.rounds.labels("failed").inc()
            log.error("update not kept", extra={"round": round_id, "error": str(exc)})
            return
        self.ledger.mark(round_id)
        self.metrics.rounds.labels("trained").inc()
        log.info(
            "update queued",
            extra={"round": round_id, "examples": update.num_examples, **update.metrics},
        )

    # -- commands ----------------------------------------------------------------------------

    def _on_command(self, command: Command) -> None:
        log.info("command", extra={"command": str(command.command), "arguments": command.args})
        if command.command is CommandName.ROLLBACK:
            outcome = self.models.rollback()
            log.info("rollback", extra={"outcome": outcome.action, "reason": outcome.reason})
        elif command.command is CommandName.TRAIN_NOW and self._last_round is not None:
            self._on_round(self._last_round, forced=True)
        self.publish_status()

    # -- shutdown ----------------------------------------------------------------------------

    def close(self, *, drain_s: float = 5.0) -> None:
        """Stop collectors, give the outbox a moment to drain, say goodbye (no Last Will)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._training is not None:
            self._training.join(timeout=30)
            self._finish_training()
        if self.client.connected:
            with self._db_lock:
                self.sender.drain(drain_s)
            with contextlib.suppress(PublishError):
                self.client.publish(self.status_topic, encode(self._status(online=False))).wait(2)
        self.client.close()
        with self._db_lock:
            self.buffer.close()
            self.outbox.close()
