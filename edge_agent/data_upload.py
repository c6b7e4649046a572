"""Raw samples from the buffer to the data topic, on devices whose owner lets data leave them.

Every `interval_s` the uploader reads, stream by stream, the samples after its position in the
buffer, packs them into `data` messages (`x` float32 (n, *shape), `y` int64 (n,)) and puts each
in the outbox, which publishes it at QoS 1 and deletes it on PUBACK, exactly like an update.

The position is an outbox *mark*, written in the same SQLite transaction as the batch: a crash
can neither lose samples (the position never moves past a batch that was not kept) nor send
them twice (it never stays behind one that was). A batch's message id is derived from the
fleet, the device, the buffer file and the exact range of samples it holds, so the same samples
always travel under the same id and receivers drop a re-sent batch.

Nothing here is dropped for lack of room: at the hourly cap, or with the outbox's data share
full, the position waits and the samples stay in the buffer (whose own retention still applies).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from bus.errors import ValidationError
from bus.protocol import DataBatch, encode_data
from edge_agent.buffer import Sample, SampleBuffer
from edge_agent.config import STREAM_NAME, DataUploadConfig
from edge_agent.metrics import EdgeMetrics
from edge_agent.outbox import Outbox, OutboxFullError

log = logging.getLogger(__name__)

MARK = "data_upload"  # the outbox mark holding the uploader's state
HOUR_S = 3600.0
MAX_BATCH_BYTES = 8 << 20  # raw feature bytes in one message: far below broker and protocol limits
SCAN_LIMIT = 4096  # samples passed over (unlabelled, other shape) in one go before yielding
STEP_BUDGET_S = 0.2  # a look that takes longer goes on at the next step: the agent loop stays live
MAX_LABEL = 2**53  # labels travel as int64; a float label beyond this is not a class index
UNCAPPED = 1 << 62


# -- the pure part: which samples form the next batch ---------------------------------------


@dataclass(frozen=True)
class Rules:
    """Which samples may be sent, and what shape they take."""

    labelled_only: bool = True
    sample_shape: tuple[int, ...] | None = None
    num_labels: int | None = None

    def reason(self, sample: Sample) -> str | None:
        """Why `sample` is not sent (`unlabelled`, `label`, `shape`), or None: it is."""
        label = sample.label
        if label is None:
            if self.labelled_only:
                return "unlabelled"
        elif not (float(label).is_integer() and 0 <= label < (self.num_labels or MAX_LABEL)):
            return "label"  # not a class index: the cloud would refuse the whole batch
        if self.sample_shape is not None and sample.features.size != math.prod(self.sample_shape):
            return "shape"
        return None

    def key(self, sample: Sample) -> tuple[tuple[int, ...], bool]:
        """Samples with the same key may share a batch: same shape, all labelled or none."""
        shape = self.sample_shape or (int(sample.features.shape[0]),)
        return shape, sample.label is not None


@dataclass(frozen=True)
class Batch:
    stream: str
    seqs: tuple[int, ...]  # buffer positions of the samples, ascending
    x: npt.NDArray[np.float32]  # (n, *shape)
    y: npt.NDArray[np.int64] | None  # (n,); None for unlabelled samples

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True)
class Plan:
    """The next batch of a stream (or None), and the position once it is kept: every sample up
    to `end` is in the batch or passed over (counted in `skipped` by reason)."""

    batch: Batch | None
    end: int
    skipped: Counter[str] = field(default_factory=Counter)


def next_batch(
    rows: Iterable[tuple[int, Sample]],
    start: int,
    *,
    stream: str,
    limit: int,
    rules: Rules,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Plan:
    """The first run of sendable samples in `rows` (after position `start`, oldest first), up
    to `limit` samples or `max_bytes`, cut where the shape or labelled-ness changes."""
    end = start
    picked: list[tuple[int, Sample]] = []
    first_key = None
    size = 0
    skipped: Counter[str] = Counter()
    for seq, sample in rows:
        reason = rules.reason(sample)
        if reason is not None:
            skipped[reason] += 1
            end = seq
            if not picked and skipped.total() >= SCAN_LIMIT:
                break
            continue
        key = rules.key(sample)
        if picked and (key != first_key or size + sample.features.nbytes > max_bytes):
            break
        picked.append((seq, sample))
        first_key, end, size = key, seq, size + sample.features.nbytes
        if len(picked) >= limit:
            break
    if not picked:
        return Plan(None, end, skipped)
    shape, labelled = rules.key(picked[0][1])
    x = np.stack([s.features for _, s in picked]).astype(np.float32, copy=False)
    y = np.array([int(s.label or 0) for _, s in picked], np.int64) if labelled else None
    batch = Batch(stream, tuple(seq for seq, _ in picked), x.reshape(len(picked), *shape), y)
    return Plan(batch, end, skipped)


def data_batch_id(
    fleet: str, device_id: str, buffer: str, stream: str, seqs: tuple[int, ...]
) -> str:
    """One id per range of samples: the same samples, sent again, carry the same id."""
    key = f"{fleet}:{device_id}:data:{buffer}:{stream}:{seqs[0]}:{seqs[-1]}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _counted(sent: list[tuple[float, int]], now: float, samples: int) -> list[tuple[float, int]]:
    """The cap's record with `samples` added at `now`: entries of the last hour only, those
    within a minute merged under the newer time (a little stricter, at most ~60 entries).
    Entries "in the future" (the clock was set back) are let go rather than block for long."""
    kept = [(t, n) for t, n in sent if now - HOUR_S < t <= now]
    if kept and now - kept[-1][0] < 60:
        return [*kept[:-1], (now, kept[-1][1] + samples)]
    return [*kept, (now, samples)]


def allowance(sent: Iterable[tuple[float, int]], now: float, cap: int) -> int:
    """Samples that may still be queued under a cap per rolling hour (0 = no cap)."""
    if cap == 0:
        return UNCAPPED
    return max(0, cap - sum(n for t, n in sent if now - HOUR_S < t <= now))


# -- the I/O part: buffer in, outbox out ------------------------------------------------------


class UploadState(BaseModel):
    """What survives a restart, kept as the outbox mark `data_upload`."""

    model_config = ConfigDict(extra="forbid")

    buffer: str = Field(description="the buffer file's instance id the positions refer to")
    origin: int = Field(ge=0, description="the position of a stream seen for the first time")
    cursors: dict[str, int] = Field(default_factory=dict, description="stream -> position")
    sent: list[tuple[float, int]] = Field(
        default_factory=list, description="(time, samples) queued in the last hour, for the cap"
    )


class DataUploader:
    """Call `step()` from the agent's loop, holding the lock the buffer and outbox share."""

    def __init__(
        self,
        config: DataUploadConfig,
        *,
        buffer: SampleBuffer,
        outbox: Outbox,
        topic: str,
        fleet: str,
        device_id: str,
        metrics: EdgeMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.buffer = buffer
        self.outbox = outbox
        self.topic = topic
        self.fleet = fleet
        self.device_id = device_id
        self.metrics = metrics
        self.clock = clock  # wall clock: the hourly cap must hold across restarts
        self.rules = Rules(
            labelled_only=config.labelled_only,
            sample_shape=None if config.sample_shape is None else tuple(config.sample_shape),
            num_labels=None if config.label_names is None else len(config.label_names),
        )
        self.state = self._load()
        self._scanned = self.state.origin  # streams are discovered in samples after this
        self._known: set[str] = set(self.state.cursors)
        self._next_look = 0.0
        self._waiting: str | None = None
        self._warned: set[tuple[str, str]] = set()

    @staticmethod
    def forget(outbox: Outbox) -> None:
        """Uploading is off: a later opt-in starts afresh rather than sending what the device
        collected meanwhile (unless that opt-in asks for `from_start`)."""
        outbox.set_mark(MARK, None)

    def _load(self) -> UploadState:
        raw = self.outbox.mark(MARK)
        if raw is not None:
            try:
                state = UploadState.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                raise ValidationError(
                    f"unreadable data upload state {raw[:120]!r} ({exc.error_count()} problems); "
                    f"remove the mark to start afresh",
                    where=f"{self.outbox.path} mark {MARK}",
                ) from exc
            if state.buffer == self.buffer.instance:
                return state
            log.warning(
                "buffer file replaced; data upload starts on the new one",
                extra={"previous": state.buffer, "buffer": self.buffer.instance},
            )
        origin = 0 if self.config.from_start else self.buffer.last_seq()
        state = UploadState(buffer=self.buffer.instance, origin=origin)
        self.outbox.set_mark(MARK, state.model_dump_json())
        log.info(
            "data upload enabled",
            extra={"from_start": self.config.from_start, "origin": origin, "topic": self.topic},
        )
        return state

    # -- looks -------------------------------------------------------------------------------

    def step(self, now: float) -> int:
        """Look for samples when it is time (`now`: monotonic); returns batches queued."""
        if now < self._next_look:
            return 0
        self._next_look = now + self.config.interval_s  # also when this look fails
        deadline = time.monotonic() + STEP_BUDGET_S
        queued = samples = 0
        waiting: str | None = None
        active = set(self._streams())
        while active and waiting is None:
            for stream in sorted(active):  # one batch per stream a pass: none starves another
                outcome = self._one(stream)
                if isinstance(outcome, Batch):
                    queued, samples = queued + 1, samples + len(outcome)
                elif outcome == "idle":
                    active.discard(stream)
                elif outcome != "passed":
                    waiting = outcome
                    break
            if time.monotonic() >= deadline:
                break
        if active and waiting is None:  # out of time, not out of samples: go on next step
            self._next_look = now
        self._report(queued, samples, waiting)
        return queued

    def _streams(self) -> list[str]:
        if self.config.streams is not None:
            return list(self.config.streams)
        scanned = self.buffer.last_seq()
        self._known |= self.buffer.streams_after(self._scanned)
        self._scanned = scanned
        named = []
        for stream in sorted(self._known):
            if STREAM_NAME.fullmatch(stream):
                named.append(stream)
            else:
                self._warn_once(stream, "name", 0)
        return named

    def _one(self, stream: str) -> Batch | str:
        """Queue the stream's next batch: the batch, or `idle`, `passed` (samples passed over,
        none sent), or why samples wait (`cap`, `queue`, `outbox_full`)."""
        wall = self.clock()
        room = allowance(self.state.sent, wall, self.config.max_samples_per_hour)
        start = self.state.cursors.get(stream, self.state.origin)
        plan = next_batch(
            self.buffer.after(start, stream=stream),
            start,
            stream=stream,
            limit=max(1, min(self.config.batch_samples, room)),
            rules=self.rules,
        )
        state = self.state.model_copy(deep=True)
        state.cursors[stream] = plan.end
        if plan.batch is None:  # passing over samples that are not sent costs no allowance
            if plan.end == start:
                return "idle"
            self.outbox.set_mark(MARK, state.model_dump_json())
            self._commit(state, stream, plan)
            return "passed"
        if room == 0:
            return "cap"
        return self._queue(plan.batch, state, plan, wall)

    def _queue(self, batch: Batch, state: UploadState, plan: Plan, wall: float) -> Batch | str:
        """Put the batch in the outbox with the state it leads to, in one transaction."""
        batches, data_bytes = self.outbox.totals(self.topic)
        if batches >= self.config.max_queued_batches:
            return "queue"
        payload = self._encode(batch)
        if data_bytes + len(payload) > self.outbox.max_bytes // 2:
            return "queue"  # the other half of the outbox stays free for updates
        if self.config.max_samples_per_hour:
            state.sent = _counted(state.sent, wall, len(batch))
        message_id = self._message_id(batch)
        try:
            self.outbox.put(self.topic, payload, message_id, mark=(MARK, state.model_dump_json()))
        except OutboxFullError:
            return "outbox_full"
        self._commit(state, batch.stream, plan)
        self.metrics.data_samples_queued.labels(batch.stream).inc(len(batch))
        self.metrics.data_batches_queued.labels(batch.stream).inc()
        log.debug(
            "data batch queued",
            extra={
                "stream": batch.stream,
                "samples": len(batch),
                "first_seq": batch.seqs[0],
                "last_seq": batch.seqs[-1],
                "message_id": message_id,
            },
        )
        return batch

    def _commit(self, state: UploadState, stream: str, plan: Plan) -> None:
        self.state = state
        for reason, count in plan.skipped.items():
            self.metrics.data_samples_skipped.labels(stream, reason).inc(count)
            self._warn_once(stream, reason, count)

    def _message_id(self, batch: Batch) -> str:
        return data_batch_id(
            self.fleet, self.device_id, self.buffer.instance, batch.stream, batch.seqs
        )

    def _encode(self, batch: Batch) -> bytes:
        names = self.config.label_names
        header = DataBatch(
            id=self._message_id(batch),
            fleet=self.fleet,
            device_id=self.device_id,
            stream=batch.stream,
            num_samples=len(batch),
            label_names=None if names is None else tuple(names),
        )
        tensors: dict[str, npt.NDArray[Any]] = {"x": batch.x}
        if batch.y is not None:
            tensors["y"] = batch.y
        return encode_data(header, tensors, compress=True)

    # -- reporting ---------------------------------------------------------------------------

    def _report(self, queued: int, samples: int, waiting: str | None) -> None:
        batches, _ = self.outbox.totals(self.topic)
        self.metrics.data_batches_waiting.set(batches)
        if queued:
            log.info(
                "data batches queued",
                extra={"batches": queued, "samples": samples, "in_outbox": batches},
            )
        if waiting is not None:
            self.metrics.data_waits.labels(waiting).inc()
            if waiting != self._waiting:  # logged once per reason, like a deferred round
                log.info(
                    "data upload waiting",
                    extra={
                        "reason": waiting,
                        "in_outbox": batches,
                        "max_queued_batches": self.config.max_queued_batches,
                        "max_samples_per_hour": self.config.max_samples_per_hour,
                    },
                )
        self._waiting = waiting

    def _warn_once(self, stream: str, reason: str, count: int) -> None:
        if (stream, reason) in self._warned:
            return
        self._warned.add((stream, reason))
        why = {
            "unlabelled": "samples without a label (data_upload.labelled_only)",
            "label": "labels that are not class indices (whole numbers >= 0, within label_names)",
            "shape": f"samples that do not fill data_upload.sample_shape {self.rules.sample_shape}",
            "name": "a stream name a data batch cannot carry (1-128 of A-Z a-z 0-9 . _ -)",
        }[reason]
        log.warning("samples not sent", extra={"stream": stream, "reason": why, "count": count})
