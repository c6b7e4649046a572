"""The hybrid loop's hand-off: a finished DDP job offers its model to the federated trainer.

Rank 0 encodes the model's parameters as a `ModelSeed` message on the seeds topic; the trainer
of `seed.model` checks it against its own model and releases it as its next version, which the
next round's devices start from. Parameters above the log's record size travel through the
object store (a claim check, as the bridge does for large updates). The message id comes from
the job and checkpoint sequence, so offering the same checkpoint twice sends the same message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.log import DeliveryReport, Producer
from bus.protocol import ModelSeed, encode_data
from bus.store import ObjectStore
from bus.store.claims import put_claim
from cloud_trainer.ddp.config import DdpConfig

log = logging.getLogger(__name__)


def seed_id(job: str, sequence: int) -> str:
    return hashlib.sha256(f"seed\0{job}\0{sequence}".encode()).hexdigest()[:32]


def seed_message(
    config: DdpConfig,
    params: Mapping[str, npt.NDArray[Any]],
    *,
    sequence: int,
    examples: int,
    store: ObjectStore,
) -> bytes:
    """The seed as the log carries it: inline, or a claim check when above max_record_bytes."""
    assert config.seed is not None
    header = ModelSeed(
        id=seed_id(config.job, sequence),
        fleet=config.seed.fleet,
        model=config.seed.model,
        source=f"ddp-{config.job}"[:128],
        checkpoint=sequence,
        num_examples=examples,
    )
    tensors = {name: np.array(value, order="C") for name, value in params.items()}  # 0-d stays 0-d
    message = encode_data(header, tensors, compress=True)
    if len(message) <= config.seed.max_record_bytes:
        return message
    return put_claim(store, message, header, header.source)


def publish_seed(producer: Producer, topic: str, message: bytes, key: str) -> None:
    """Produce and wait for the log to confirm: the job reports the seed sent only then."""
    failed: list[str] = []

    def done(report: DeliveryReport) -> None:
        if report.error is not None:
            failed.append(str(report.error))

    producer.produce(topic, message, key=key.encode(), on_delivery=done)
    if producer.flush(30) != 0 or failed:
        raise RuntimeError(f"the seed was not written to {topic}: {failed or 'flush timed out'}")
