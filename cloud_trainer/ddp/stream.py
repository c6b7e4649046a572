"""A rank's share of the data topic, read with explicit offsets and decoded from the wire.

Records are `DataBatch` messages carrying `x` (samples) and `y` (integer labels). One that does
not decode or does not fit is skipped with a warning and counted; its offset still advances, so
a bad record is never the reason a job stops or re-reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ProtocolError, ValidationError
from bus.log import Consumer
from bus.protocol import DataBatch, decode_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataRecord:
    partition: int
    offset: int
    x: npt.NDArray[Any]
    y: npt.NDArray[np.int64]


def samples_of(value: bytes, sample_shape: tuple[int, ...] | None) -> tuple[Any, Any]:
    """(x, y) of one data record, or ValidationError/ProtocolError saying what is wrong."""
    message = decode_message(value)
    header = message.envelope
    if not isinstance(header, DataBatch):
        raise ValidationError(f"a {header.kind} message, not data", where="record")
    tensors = message.tensors
    if "x" not in tensors or "y" not in tensors:
        raise ValidationError(f"needs tensors x and y, has {sorted(tensors)}", where="record")
    x, y = tensors["x"], tensors["y"]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValidationError(f"y must be 1-D integer labels, not {y.dtype} {y.shape}", where="y")
    if x.ndim < 2 or x.shape[0] != y.shape[0] or x.shape[0] != header.num_samples:
        raise ValidationError(
            f"x {x.shape} and y {y.shape} do not hold {header.num_samples} samples", where="x"
        )
    if sample_shape is not None and tuple(x.shape[1:]) != sample_shape:
        raise ValidationError(f"samples of shape {x.shape[1:]}, expected {sample_shape}", where="x")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValidationError("x holds NaN or Inf", where="x")
    if y.min() < 0:
        raise ValidationError("negative label", where="y")
    return x, y.astype(np.int64)


class ShardReader:
    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        offsets: dict[int, int],
        *,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.next = dict(offsets)
        self.sample_shape = sample_shape
        self.rejected = 0
        if offsets:
            consumer.assign([(topic, p, o) for p, o in sorted(offsets.items())])

    def take(self, count: int, timeout: float) -> list[DataRecord]:
        """Up to `count` valid records, waiting at most `timeout` for the first ones."""
        taken: list[DataRecord] = []
        if not self.next:
            return taken
        deadline = time.monotonic() + timeout
        while len(taken) < count:
            record = self.consumer.poll(max(0.0, deadline - time.monotonic()) if not taken else 0)
            if record is None:
                if taken or time.monotonic() >= deadline:
                    break
                continue
            self.next[record.partition] = record.offset + 1
            try:
                x, y = samples_of(record.value, self.sample_shape)
            except (ProtocolError, ValidationError) as exc:
                self.rejected += 1
                log.warning(
                    "data record skipped",
                    extra={
                        "partition": record.partition,
                        "offset": record.offset,
                        "error": str(exc),
                    },
                )
                continue
            if self.sample_shape is None:
                self.sample_shape = tuple(x.shape[1:])
            taken.append(DataRecord(record.partition, record.offset, x, y))
        return taken
