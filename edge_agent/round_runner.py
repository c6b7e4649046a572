"""One round on the device: the base model's weights, the buffered window, local training,
and the update encoded with the round's codec — ready for the outbox.

Imported only where torch is (the `edge-train` extra); an inference-only device never loads it.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ValidationError
from bus.protocol import ModelUpdate, RoundAnnouncement, encode_update
from bus.protocol.codecs import Residual
from edge_agent.buffer import Window
from edge_agent.local_training import LocalResult, train_local
from edge_agent.privacy import PrivacyAccountant
from models.registry import get_spec
from models.workflow import load_weights


@dataclass(frozen=True)
class RoundUpdate:
    message_id: str
    payload: bytes
    num_examples: int
    metrics: dict[str, float]


def input_shape(architecture: str, config: dict[str, object], width: int) -> tuple[int, ...]:
    """How a flat sample of `width` values becomes this architecture's input."""
    kind = get_spec(architecture).input_kind
    if kind == "sensor":
        channels = int(str(config["in_channels"]))
        if width % channels:
            raise ValidationError(
                f"{width} features do not split into {channels} channels", where="samples"
            )
        return (channels, width // channels)
    if kind == "image":
        side = math.isqrt(width)
        if side * side != width:
            raise ValidationError(f"{width} features are not a square image", where="samples")
        return (1, side, side)
    return (width,)


def update_id(announcement: RoundAnnouncement, device_id: str) -> str:
    """One id per device and round: a round trained again after a crash (between the outbox
    write and the round ledger's) yields the same id, which the outbox and the cloud drop."""
    key = f"{announcement.fleet}:{announcement.model}:{announcement.round_id}:{device_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def update_header(
    announcement: RoundAnnouncement, device_id: str, result: LocalResult
) -> ModelUpdate:
    """The header of this device's update for the round (finite metrics only)."""
    return ModelUpdate(
        id=update_id(announcement, device_id),
        fleet=announcement.fleet,
        device_id=device_id,
        round_id=announcement.round_id,
        model=announcement.model,
        base_version=announcement.base_version,
        num_examples=result.num_examples,
        codec=announcement.training.codec,
        metrics={k: float(v) for k, v in result.metrics.items() if math.isfinite(v)},
        privacy=result.privacy,
    )


def run_round(
    announcement: RoundAnnouncement,
    *,
    device_id: str,
    weights: Path,
    window: Window,
    accountant: PrivacyAccountant | None,
    residual: Residual | None,
    stop: threading.Event | None = None,
) -> tuple[RoundUpdate, Residual | None]:
    loaded = load_weights(weights)
    shape = input_shape(loaded.architecture, loaded.config, int(window.features.shape[1]))
    seed = int.from_bytes(
        hashlib.sha256(f"{announcement.round_id}:{device_id}".encode()).digest()[:4], "big"
    )
    result = train_local(
        loaded.module,
        window,
        announcement.training,
        input_shape=shape,
        seed=seed,
        accountant=accountant,
        stop=stop,
    )
    header = update_header(announcement, device_id, result)
    payload, left = encode_update(
        header,
        result.delta,
        compress=announcement.training.compression == "zstd",
        residual=residual,
    )
    return RoundUpdate(header.id, payload, result.num_examples, dict(header.metrics)), left
