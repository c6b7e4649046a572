"""A round's update is encoded with the codec the round announced, and decodes to the delta."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bus.protocol import (
    CodecName,
    CodecSpec,
    ModelUpdate,
    RoundAnnouncement,
    TrainingConfig,
    decode_message,
)
from bus.protocol.codecs import Residual
from edge_agent.buffer import Window
from edge_agent.round_runner import RoundUpdate, run_round
from models.release import WEIGHTS_NAME, model_files
from tests.unit.edge_agent.release_helpers import CLASSES, WIDTH, mlp


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module, config = mlp(3)
    directory = tmp_path_factory.mktemp("release")
    model_files(
        module,
        architecture="mlp",
        config=config,
        example=np.zeros((1, WIDTH), np.float32),
        directory=directory,
    )
    return directory / WEIGHTS_NAME


def window(rows: int = 96) -> Window:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, rows)
    features = rng.normal(size=(rows, WIDTH)).astype(np.float32) + labels[:, None]
    return Window(features.astype(np.float32), labels.astype(np.float32))


def announcement(codec: CodecSpec, compression: str = "none") -> RoundAnnouncement:
    return RoundAnnouncement(
        fleet="farm",
        round_id="r7",
        model="har",
        base_version=4,
        deadline=time.time() + 60,
        training=TrainingConfig(
            epochs=2, batch_size=16, learning_rate=0.1, codec=codec, compression=compression
        ),
    )


def train(
    weights: Path,
    codec: CodecSpec,
    *,
    compression: str = "none",
    device_id: str = "pi-1",
    rows: int = 96,
) -> tuple[RoundUpdate, Residual | None]:
    return run_round(
        announcement(codec, compression),
        device_id=device_id,
        weights=weights,
        window=window(rows),
        accountant=None,
        residual=None,
    )


@pytest.mark.parametrize(
    ("codec", "tolerance"),
    [
        (CodecSpec(name=CodecName.FP32), 0.0),
        (CodecSpec(name=CodecName.FP16), 1e-3),
        (CodecSpec(name=CodecName.INT8), 0.02),
    ],
    ids=["fp32", "fp16", "int8"],
)
def test_dense_codecs_decode_to_the_trained_delta(
    weights: Path, codec: CodecSpec, tolerance: float
) -> None:
    reference, _ = train(weights, CodecSpec(name=CodecName.FP32))
    exact = decode_message(reference.payload).tensors
    update, residual = train(weights, codec, compression="zstd")
    message = decode_message(update.payload)
    header = message.envelope
    assert isinstance(header, ModelUpdate)
    assert header.id == update.message_id
    assert header.codec == codec
    assert (header.round_id, header.base_version, header.num_examples) == ("r7", 4, 96)
    assert header.payload is not None
    assert header.payload.compression == "zstd"
    assert residual is None
    for name, value in exact.items():
        scale = float(np.abs(value).max()) or 1.0
        assert np.abs(message.tensors[name] - value).max() <= tolerance * scale + 1e-7, name
    assert any(np.abs(v).max() > 0 for v in exact.values())


def test_topk_sends_a_share_and_keeps_the_rest_for_next_time(weights: Path) -> None:
    codec = CodecSpec(name=CodecName.TOPK, topk_ratio=0.1)
    update, residual = train(weights, codec)
    decoded = decode_message(update.payload).tensors
    assert residual is not None
    for name, sent in decoded.items():
        if sent.dtype.kind != "f":
            continue
        nonzero = int(np.count_nonzero(sent))
        assert nonzero <= max(1, int(np.ceil(0.1 * sent.size)))
        # where an entry was sent, only its int8 rounding (at most half a step) is kept back
        step = float(np.max(np.abs(sent))) / 127
        assert np.all(np.abs(residual[name][sent != 0]) <= step / 2 + 1e-7)


def test_a_round_trained_twice_yields_one_message_id(weights: Path) -> None:
    """A crash between queueing the update and noting the round trains it again on restart."""
    first, _ = train(weights, CodecSpec(name=CodecName.FP32))
    again, _ = train(weights, CodecSpec(name=CodecName.FP32), rows=64)
    other, _ = train(weights, CodecSpec(name=CodecName.FP32), device_id="pi-2")
    assert first.message_id == again.message_id
    assert other.message_id != first.message_id
