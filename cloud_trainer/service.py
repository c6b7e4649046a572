"""`fleetlearn trainer run`: the federated side of one model, wired to the log and the store.

The order of effects at a round's close is what makes a kill at any moment harmless:

1. aggregate (pure; the same records in the same order give the same bytes),
2. release the new version (upload, registry, publish — each idempotent),
3. checkpoint: model, optimizer state, the next round and the offsets covered,
4. announce the next round.

Killed before 3, a restart replays the round from the previous checkpoint's offsets and
releases the same version again; killed after 3, it re-announces the stored round. Rejected
updates go to the dead-letter topic as they are met, and again if met again after a restart
(the dead-letter topic is at-least-once; the aggregate is exactly-once). A seed adopted from the
DDP job takes the place of 1 and then goes through the same steps (`_publish`).

A round's duration (`trainer_round_duration_seconds`) runs from its announcement's `created_at`
to the step that decides to close it, both read from the service's clock. The announcement is
part of the checkpoint, so a round announced before a restart is measured from when it really
was announced (downtime included), never from the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bus.bridge.uplink import ERROR_HEADER
from bus.errors import FleetlearnError, LogError
from bus.log import Consumer, Log, Producer, Record, open_log
from bus.protocol import (
    DEFAULT_LIMITS,
    ModelSeed,
    ModelUpdate,
    RoundAnnouncement,
    Status,
    decode_message,
    encode_message,
    peek_header,
)
from bus.store import ObjectStore, open_store
from bus.store.claims import resolve_claim
from cloud_trainer.checkpoint import CheckpointStore, RoundState
from cloud_trainer.config import TrainerConfig
from cloud_trainer.coordinator import Coordinator, NewVersion, first_round
from cloud_trainer.metrics import TrainerMetrics, VersionFigures
from cloud_trainer.ordered import OrderedReader
from cloud_trainer.release import (
    Lineage,
    RegistryEntry,
    ReleaseConfig,
    ReleasePipeline,
    load_private_key,
)
from cloud_trainer.strategies import build_strategy

log = logging.getLogger(__name__)


class TrainerService:
    """Owns the trainer's connections; `run` loops until stopped or the last version."""

    def __init__(
        self,
        config: TrainerConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = TrainerMetrics(config.model.name, config.metrics.tensorboard_dir)
        self.log: Log = open_log(config.log_url)
        self.store: ObjectStore = open_store(config.store_url)
        self.producer: Producer = self.log.producer()
        self.checkpoints = CheckpointStore(
            self.store, config.model.name, keep=config.checkpoints_kept
        )
        self.strategy = build_strategy(config.strategy)
        self.pipeline = self._pipeline()
        self._readers: list[Any] = []
        self.coordinator: Coordinator | None = None
        self.updates: OrderedReader | None = None
        self.status: Consumer | None = None
        self._status_next: dict[int, int] = {}
        self.seeds: Consumer | None = None
        self._seed_next: dict[int, int] = {}

    def _pipeline(self) -> ReleasePipeline:
        model = self.config.model
        release = self.config.release
        architecture_config = dict(model.config) or self._default_architecture_config()
        self.architecture_config = architecture_config
        return ReleasePipeline(
            ReleaseConfig(
                fleet=self.config.fleet,
                model=model.name,
                architecture=model.architecture,
                architecture_config=architecture_config,
                dataset=model.dataset,
                split_seed=model.split_seed,
                holdout=model.holdout,
                inline_max_bytes=release.inline_max_bytes,
                url_expiry_s=release.url_expiry_s,
                tflite=release.tflite,
                releases_topic=self.config.topics.releases,
            ),
            store=self.store,
            producer=self.producer,
            key=load_private_key(release.private_key),
            key_id=release.key_id,
        )

    def _default_architecture_config(self) -> dict[str, Any]:
        from models.datasets import load
        from models.workflow import default_config

        return default_config(self.config.model.architecture, load(self.config.model.dataset))

    # -- start ----------------------------------------------------------------------------

    def start(self) -> TrainerService:
        """Resume from the latest checkpoint, or release version 0 and open the first round."""
        partitions = self.config.partitions
        topics = self.config.topics
        self.log.create_topics(
            {
                topics.update: partitions,
                topics.status: partitions,
                topics.rounds: 1,
                topics.releases: 1,
                topics.dlq: 1,
                topics.seeds: 1,
            }
        )
        checkpoint = self.checkpoints.load()
        if checkpoint is None:
            coordinator = self._fresh()
        else:
            coordinator = Coordinator(
                self.config, self.strategy, checkpoint.state, checkpoint.model, checkpoint.optimizer
            )
            log.info(
                "resumed from checkpoint",
                extra={
                    "version": checkpoint.state.version,
                    "round": coordinator.round.round_id,
                    "offsets": checkpoint.state.update_offsets,
                },
            )
        self.coordinator = coordinator
        state = checkpoint.state if checkpoint else None
        self.updates = OrderedReader(
            self.log.consumer(f"fleetlearn-trainer-{self.config.model.name}"),
            topics.update,
            lambda: self.log.end_offsets(topics.update),
            self._offsets(topics.update, state.update_offsets if state else None),
            grace_ms=int(self.config.rounds.late_grace_s * 1000),
            clock=self.clock,
        )
        self._status_next = self._offsets(topics.status, state.status_offsets if state else None)
        self.status = self.log.consumer(f"fleetlearn-trainer-{self.config.model.name}-status")
        self.status.assign([(topics.status, p, o) for p, o in sorted(self._status_next.items())])
        self._seed_next = self._offsets(
            topics.seeds, (state.seed_offsets or None) if state else None
        )
        self.seeds = self.log.consumer(f"fleetlearn-trainer-{self.config.model.name}-seeds")
        self.seeds.assign([(topics.seeds, p, o) for p, o in sorted(self._seed_next.items())])
        if checkpoint is None:
            self._checkpoint()
        if not self.finished:
            self._announce(coordinator.round)
        if self.config.metrics.prometheus_port is not None:
            self.metrics.serve(self.config.metrics.prometheus_port)
        self.metrics.version.labels(self.config.model.name).set(coordinator.version)
        return self

    def _offsets(self, topic: str, stored: dict[int, int] | None) -> dict[int, int]:
        """Stored offsets, or (fresh start) the ends or the beginnings as configured."""
        ends = self.log.end_offsets(topic)
        if stored is None:
            if self.config.fresh_start == "earliest":
                return {p: 0 for p in ends}
            return dict(ends)
        return {p: stored.get(p, 0) for p in ends}

    def _fresh(self) -> Coordinator:
        from models.params import get_parameters
        from models.workflow import build_seeded

        model = self.config.model
        module = build_seeded(model.architecture, self.architecture_config, model.init_seed)
        params = get_parameters(module)
        self.pipeline.release(
            params,
            version=0,
            round_id=None,
            parent_version=None,
            lineage=Lineage(
                round_id=None, update_ids=(), device_ids=(), strategy=self.config.strategy.name
            ),
        )
        now = self.clock()
        placeholder = RoundState(
            version=0,
            round=first_round(self.config, now).model_dump(mode="json", by_alias=True),
            update_offsets={},
            model_sha256="",
            optimizer_sha256="",
        )
        coordinator = Coordinator(self.config, self.strategy, placeholder, params, {})
        coordinator.next_round(now)
        log.info("initial model released", extra={"model": model.name, "version": 0})
        return coordinator

    # -- loop -----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        limit = self.config.rounds.max_versions
        return (
            limit is not None and self.coordinator is not None and self.coordinator.version >= limit
        )

    def run(self, stop: threading.Event | None = None, *, max_seconds: float | None = None) -> None:
        stop = stop or threading.Event()
        ends_at = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and not self.finished:
            if ends_at is not None and time.monotonic() >= ends_at:
                break
            self.step()

    def step(self) -> None:
        """One record (if any), pending statuses, and the round's close if it is due."""
        assert self.updates is not None
        assert self.coordinator is not None
        record = self.updates.poll(self.config.poll_s)
        if record is not None:
            self._handle(record)
        self._read_statuses()
        self._read_seeds()
        self.producer.poll(0)
        coordinator = self.coordinator
        now = self.clock()
        decision = coordinator.decide(now, self.updates.caught_up)
        if decision == "close":
            round_s = self._round_seconds(coordinator.round, now)
            self._close(coordinator.close(), round_s=round_s)
        elif decision == "abandon":
            log.warning(
                "round abandoned: too few updates by the deadline",
                extra={"round": coordinator.round.round_id, "accepted": coordinator.accepted},
            )
            self.metrics.abandoned.labels(self.config.model.name).inc()
            coordinator.abandon()
            coordinator.next_round(self.clock())
            self._checkpoint()
            self._announce(coordinator.round)

    def _handle(self, record: Record) -> None:
        assert self.coordinator is not None
        try:
            value = resolve_claim(record.value, self.store, DEFAULT_LIMITS)
            message = decode_message(value)
        except FleetlearnError as exc:
            self._reject(record, str(exc))
            return
        header = message.envelope
        if not isinstance(header, ModelUpdate):
            self._reject(record, f"a {header.kind.value} message on the updates topic")
            return
        verdict = self.coordinator.on_update(header, message.tensors, record.timestamp_ms)
        if verdict.accepted:
            self.metrics.accepted.labels(self.config.model.name).inc()
            log.info(
                "update counted",
                extra={"id": header.id, "device": header.device_id, "round": header.round_id},
            )
        else:
            self._reject(record, verdict.reason or "rejected", device=header.device_id)

    def _reject(self, record: Record, reason: str, device: str | None = None) -> None:
        log.warning(
            "update rejected",
            extra={
                "partition": record.partition,
                "offset": record.offset,
                "device": device,
                "reason": reason,
            },
        )
        self.metrics.reject(reason)
        headers = [
            (ERROR_HEADER, reason.encode()[:4096]),
            ("source-topic", record.topic.encode()),
            ("source-partition", str(record.partition).encode()),
            ("source-offset", str(record.offset).encode()),
        ]
        self.producer.produce(self.config.topics.dlq, record.value, key=record.key, headers=headers)

    def _read_statuses(self, limit: int = 200) -> None:
        assert self.status is not None
        assert self.coordinator is not None
        for _ in range(limit):
            record = self.status.poll(0)
            if record is None:
                return
            self._status_next[record.partition] = record.offset + 1
            try:
                header = peek_header(record.value)
            except FleetlearnError:
                continue  # the bridge already dead-lettered malformed statuses
            if isinstance(header, Status):
                self.coordinator.on_status(header, record.timestamp_ms)

    def _read_seeds(self) -> None:
        """Adopt a model offered on the seeds topic (at most one per step: each is a version)."""
        assert self.seeds is not None
        record = self.seeds.poll(0)
        if record is None:
            return
        self._seed_next[record.partition] = record.offset + 1
        try:
            message = decode_message(resolve_claim(record.value, self.store, DEFAULT_LIMITS))
        except FleetlearnError as exc:
            self._reject(record, str(exc))
            return
        header = message.envelope
        if not isinstance(header, ModelSeed):
            self._reject(record, f"a {header.kind.value} message on the seeds topic")
            return
        if header.model != self.config.model.name or header.fleet != self.config.fleet:
            log.info(
                "seed for another model skipped",
                extra={"id": header.id, "model": header.model, "fleet": header.fleet},
            )
            self._checkpoint()  # seeds are rare: record at once that this one is dealt with
            return
        try:
            self._adopt(header, message.tensors)
        except FleetlearnError as exc:
            self._reject(record, f"seed refused: {exc}")
            self._checkpoint()  # seeds are rare: record at once that this one is dealt with

    def _adopt(self, header: ModelSeed, tensors: dict[str, np.ndarray[Any, Any]]) -> None:
        assert self.coordinator is not None
        coordinator = self.coordinator
        dropped = coordinator.round.round_id
        new = coordinator.adopt(tensors, round_id=f"{header.source}@{header.checkpoint}")
        strategy = f"seed-{header.source}"[:128]
        entry = self._publish(
            new,
            round_id=None,
            lineage=Lineage(round_id=None, update_ids=(), device_ids=(), strategy=strategy),
            extra_metrics={
                "seed_examples": float(header.num_examples),
                "seed_checkpoint": float(header.checkpoint),
            },
        )
        log.info(
            "seed adopted",
            extra={
                "id": header.id,
                "source": header.source,
                "checkpoint": header.checkpoint,
                "examples": header.num_examples,
                "version": new.version,
                "dropped_round": dropped,
                "accuracy": entry.metrics.get("accuracy"),
            },
        )

    def _close(self, new: NewVersion, *, round_s: float | None = None) -> None:
        train_loss = {"train_loss": new.train_loss} if new.train_loss is not None else {}
        self._publish(
            new,
            round_id=new.round_id,
            lineage=Lineage(
                round_id=new.round_id,
                update_ids=new.update_ids,
                device_ids=new.device_ids,
                strategy=self.config.strategy.name,
            ),
            extra_metrics={
                "rejected": float(new.rejected),
                "aggregation_s": new.aggregation_s,
                **train_loss,
            },
            round_s=round_s,
        )

    def _publish(
        self,
        new: NewVersion,
        *,
        round_id: str | None,
        lineage: Lineage,
        extra_metrics: dict[str, float],
        round_s: float | None = None,
    ) -> RegistryEntry:
        """Steps 2 to 4 for a new version, whether a round closed or a seed was adopted:
        release it, move to the next round, checkpoint, record its figures, announce."""
        assert self.coordinator is not None
        entry = self.pipeline.release(
            new.model,
            version=new.version,
            round_id=round_id,
            parent_version=new.parent_version,
            lineage=lineage,
            extra_metrics=extra_metrics,
        )
        if not self.finished:
            self.coordinator.next_round(self.clock())
        self._checkpoint()
        self.metrics.record(
            VersionFigures(
                model=self.config.model.name,
                version=new.version,
                round_id=new.round_id,
                participants=new.participants,
                rejected=new.rejected,
                aggregation_s=new.aggregation_s,
                accuracy=entry.metrics.get("accuracy"),
                loss=entry.metrics.get("loss"),
                train_loss=new.train_loss,
                round_s=round_s,
            )
        )
        if not self.finished:
            self._announce(self.coordinator.round)
        return entry

    def _round_seconds(self, announcement: RoundAnnouncement, closed_at: float) -> float | None:
        """Seconds from the round's announcement to `closed_at`; None when the clock reads
        earlier than the announcement (set back, or another machine's clock before a restart)."""
        seconds = closed_at - announcement.created_at
        if seconds < 0:
            log.warning(
                "round duration not recorded: the clock is behind the round's announcement",
                extra={
                    "round": announcement.round_id,
                    "announced_at": announcement.created_at,
                    "now": closed_at,
                },
            )
            return None
        return seconds

    def _checkpoint(self) -> None:
        assert self.coordinator is not None
        assert self.updates is not None
        self._flush()
        state = self.coordinator.state(self.updates.positions(), self._status_next, self._seed_next)
        seq = self.checkpoints.save(state, self.coordinator.model, self.coordinator.optimizer)
        log.info(
            "checkpoint written",
            extra={
                "seq": seq,
                "version": self.coordinator.version,
                "offsets": state["update_offsets"],
            },
        )

    def _announce(self, announcement: RoundAnnouncement) -> None:
        self.producer.produce(
            self.config.topics.rounds, encode_message(announcement), key=announcement.model.encode()
        )
        self._flush()
        log.info(
            "round announced",
            extra={
                "round": announcement.round_id,
                "base_version": announcement.base_version,
                "deadline": announcement.deadline,
                "devices": len(announcement.sampling.devices or ()),
            },
        )

    def _flush(self) -> None:
        pending = self.producer.flush(30.0)
        if pending:
            raise LogError(f"{pending} record(s) not confirmed by the log within 30 s")

    def final_model(self) -> dict[str, np.ndarray[Any, Any]]:
        assert self.coordinator is not None
        return dict(self.coordinator.model)

    def close(self) -> None:
        for closer in (
            self.updates.close if self.updates else None,
            self.status.close if self.status else None,
            self.seeds.close if self.seeds else None,
            self.producer.close,
            self.log.close,
            self.metrics.close,
        ):
            if closer is None:
                continue
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - closing must reach every resource
                log.warning("error while closing", extra={"reason": str(exc)})
