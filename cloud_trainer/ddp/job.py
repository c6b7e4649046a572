"""`fleetlearn trainer ddp`: one rank of a `torchrun` job training on the fleet's data stream.

Every rank reads its own partitions of the data topic with explicit offsets and trains on what
it took; all ranks step together (DDP all-reduces the gradients), a rank with nothing this step
taking part with an empty batch, so uneven shards neither stall the job nor leave records out.
The loss is scaled so the all-reduced gradient is the mean over every sample of the step,
wherever it came from. Every `checkpoint.every_steps` the ranks write their offsets and rank 0
the model, and rank 0 commits the pointer (see checkpoint.py): a restart — one rank killed and
torchrun restarting them all, or the whole job started again — resumes from there.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous
from torch.nn.parallel import DistributedDataParallel

from bus.errors import ConfigError
from bus.log import Log, open_log
from bus.store import open_store
from cloud_trainer.ddp.checkpoint import (
    DdpCheckpoints,
    Pointer,
    RankRecord,
    rng_state,
    set_rng_state,
)
from cloud_trainer.ddp.config import DdpConfig
from cloud_trainer.ddp.seed import publish_seed, seed_message
from cloud_trainer.ddp.shards import as_ranges, merge_offsets, partitions_for
from cloud_trainer.ddp.stream import DataRecord, ShardReader
from models.registry import get_spec
from models.workflow import build_seeded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    rank: int
    world: int
    step: int
    samples: int
    """Samples this rank trained in this attempt."""
    restarts: int
    rejected: int
    sequence: int


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str


def _init_distributed(config: DdpConfig) -> _Dist:
    """torchrun's environment, or a world of one when started without it."""
    cuda = torch.cuda.is_available() and config.backend in {"auto", "nccl"}
    if config.backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend nccl needs CUDA; use gloo (or auto) on CPU")
    backend = "nccl" if cuda else "gloo"
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )
    else:
        # Each torchrun attempt under a prefix of its own: the launcher's store outlives a
        # restart, and the peers' addresses the killed attempt left there are dead ends.
        timeout = datetime.timedelta(minutes=5)
        store, rank, world = next(rendezvous("env://", timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend,
            store=PrefixStore(f"fleetlearn/attempt-{attempt}", store),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Dist(rank, world, local_rank, device, backend)


class DdpJob:
    def __init__(self, config: DdpConfig, where: _Dist) -> None:
        self.config = config
        self.where = where
        self.restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.log: Log = open_log(config.log_url)
        self.checkpoints = DdpCheckpoints(
            open_store(config.store_url), config.job, keep_states=config.checkpoint.keep_states
        )
        spec = get_spec(config.model.architecture)
        self.token_ids = spec.input_kind == "text"
        self.sample_shape = tuple(config.model.input_shape)
        self.module: nn.Module = build_seeded(
            config.model.architecture, dict(config.model.config), config.model.init_seed
        ).to(where.device)
        training = config.training
        self.optimizer = torch.optim.SGD(
            self.module.parameters(),
            lr=training.learning_rate,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=training.lr_step, gamma=training.lr_gamma
        )
        self.step = 0
        self.pointer = self.checkpoints.pointer()
        offsets = self._start_offsets()
        self.reader = ShardReader(
            self.log.consumer(f"fleetlearn-ddp-{config.job}-{where.rank}"),
            config.topic,
            offsets,
            sample_shape=self.sample_shape,
        )
        self.ddp = DistributedDataParallel(
            self.module, device_ids=[where.local_rank] if where.device.type == "cuda" else None
        )
        self._since: list[tuple[int, int]] = []
        self._samples = 0
        self._loss_sum = 0.0
        self.trained_samples = 0
        self._step_samples = 0  # every rank's samples, this attempt (throughput)

    # -- start --------------------------------------------------------------------------------

    def _start_offsets(self) -> dict[int, int]:
        config, where = self.config, self.where
        ends = self.log.end_offsets(config.topic)
        if not ends:
            raise ConfigError(f"data topic {config.topic!r} has no partitions (does it exist?)")
        mine = partitions_for(where.rank, where.world, ends)
        pointer = self.pointer
        if pointer is None:
            torch.manual_seed(config.training.seed + where.rank)
            return {p: 0 if config.start == "earliest" else ends[p] for p in mine}
        state = self.checkpoints.state(pointer)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if pointer.world == where.world:
            set_rng_state(self.checkpoints.rank(pointer, pointer.sequence, where.rank).rng)
        else:
            torch.manual_seed(config.training.seed + where.rank + self.step)
        fresh = 0 if config.start == "earliest" else None
        offsets = {p: pointer.offsets.get(p, ends[p] if fresh is None else fresh) for p in mine}
        log.info(
            "resumed from checkpoint",
            extra={
                "sequence": pointer.sequence,
                "step": self.step,
                "rank": where.rank,
                "restarts": self.restarts,
                "offsets": offsets,
            },
        )
        return offsets

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> JobResult:
        training = self.config.training
        idle_since = time.monotonic()
        first_step: float | None = None
        last_step = 0.0
        while training.max_steps is None or self.step < training.max_steps:
            records = self.reader.take(training.records_per_step, self.config.poll_s)
            local = sum(len(r.y) for r in records)
            idle = (
                local == 0
                and training.idle_stop_s is not None
                and (time.monotonic() - idle_since >= training.idle_stop_s)
            )
            flags = torch.tensor([float(local), 1.0 if idle else 0.0], dtype=torch.float64)
            flags = flags.to(self.where.device)
            dist.all_reduce(flags)
            total, idle_ranks = int(flags[0].item()), int(flags[1].item())
            if total == 0:
                if idle_ranks == self.where.world:
                    break
                continue
            if local:
                idle_since = time.monotonic()
            first_step = first_step or time.monotonic()
            self._train_step(records, total)
            last_step = time.monotonic()
            self._step_samples += total
            if self.step % self.config.checkpoint.every_steps == 0:
                self.save()
        if self._samples or self.pointer is None or self.pointer.step != self.step:
            self.save()
        if self.config.seed is not None and self.where.rank == 0 and self.pointer is not None:
            self.offer_seed(self.pointer)
        seconds = last_step - first_step if first_step is not None else 0.0
        log.info(
            "job finished",
            extra={
                "rank": self.where.rank,
                "world": self.where.world,
                "step": self.step,
                "samples": self._step_samples,
                "train_seconds": seconds,
                "samples_per_s": self._step_samples / seconds if seconds > 0 else 0.0,
            },
        )
        return JobResult(
            rank=self.where.rank,
            world=self.where.world,
            step=self.step,
            samples=self.trained_samples,
            restarts=self.restarts,
            rejected=self.reader.rejected,
            sequence=0 if self.pointer is None else self.pointer.sequence,
        )

    def _batch(self, records: list[DataRecord]) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = np.int64 if self.token_ids else np.float32
        if records:
            x = np.concatenate([r.x for r in records]).astype(dtype, copy=False)
            y = np.concatenate([r.y for r in records])
        else:  # this rank takes part in the step with no samples
            x = np.empty((0, *self.sample_shape), dtype=dtype)
            y = np.empty(0, dtype=np.int64)
        device = self.where.device
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def _train_step(self, records: list[DataRecord], total: int) -> None:
        x, y = self._batch(records)
        self.module.train()
        amp = self.config.training.amp and self.where.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with autocast:
            logits = self.ddp(x)
            loss_sum = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        # DDP averages gradients over ranks; scaling by world / total makes that average the
        # mean over every sample of the step, however unevenly the ranks' batches are sized.
        loss = loss_sum * (self.where.world / total)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._since.extend((r.partition, r.offset) for r in records)
        self._samples += len(y)
        self.trained_samples += len(y)
        self._loss_sum += float(loss_sum.item())

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> Pointer | None:
        """Every rank its record, rank 0 the model; then rank 0 commits the pointer."""
        where = self.where
        previous = self.pointer
        sequence = (previous.sequence if previous else 0) + 1
        record = RankRecord(
            rank=where.rank,
            world=where.world,
            offsets=dict(self.reader.next),
            trained=as_ranges(self._since),
            rng=rng_state(),
            samples=self._samples,
            loss_sum=self._loss_sum,
        )
        objects = [self.checkpoints.put_rank(sequence, record)]
        if where.rank == 0:
            state = {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
            }
            objects.append(self.checkpoints.put_state(sequence, state))
        gathered: list[Any] = [None] * where.world
        dist.all_gather_object(gathered, (objects, record.offsets))
        pointer = Pointer(
            sequence=sequence,
            step=self.step,
            world=where.world,
            restarts=self.restarts,
            offsets=merge_offsets(offsets for _, offsets in gathered),
            objects={key: sha for parts, _ in gathered for key, sha in parts},
            chain=[*(previous.chain if previous else []), (sequence, where.world)],
        )
        if where.rank == 0:
            self.checkpoints.commit(pointer)
        dist.barrier()
        log.info(
            "checkpoint saved",
            extra={
                "sequence": sequence,
                "step": self.step,
                "rank": where.rank,
                "samples": self._samples,
                "loss": self._loss_sum / max(1, self._samples),
            },
        )
        self.pointer = pointer
        self._since, self._samples, self._loss_sum = [], 0, 0.0
        return pointer

    def offer_seed(self, pointer: Pointer) -> None:
        """The final model to the trainer named in `seed` (rank 0, after the last checkpoint)."""
        seed = self.config.seed
        assert seed is not None
        params = {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}
        examples = sum(record.samples for record in self.checkpoints.history(pointer))
        message = seed_message(
            self.config,
            params,
            sequence=pointer.sequence,
            examples=examples,
            store=self.checkpoints.store,
        )
        producer = self.log.producer()
        try:
            publish_seed(producer, seed.topic, message, seed.model)
        finally:
            producer.close()
        log.info(
            "seed offered",
            extra={
                "model": seed.model,
                "topic": seed.topic,
                "checkpoint": pointer.sequence,
                "examples": examples,
                "bytes": len(message),
            },
        )

    def close(self) -> None:
        self.reader.consumer.close()
        self.log.close()


def run_ddp(config: DdpConfig) -> JobResult:
    where = _init_distributed(config)
    try:
        job = DdpJob(config, where)
        try:
            return job.run()
        finally:
            job.close()
    finally:
        dist.destroy_process_group()
