"""One valid message of every kind, for the protocol tests."""

from __future__ import annotations

import hashlib

import numpy as np

from bus.protocol import (
    CodecSpec,
    Command,
    DataBatch,
    ModelFile,
    ModelUpdate,
    ReleaseManifest,
    RoundAnnouncement,
    Status,
    TrainingConfig,
    encode_data,
    encode_message,
    encode_update,
)

FILE_BYTES = np.frombuffer(b"\x08\x01onnx-bytes", dtype=np.uint8)


def update_header(codec: str = "int8", ratio: float | None = None) -> ModelUpdate:
    return ModelUpdate(
        fleet="farm",
        device_id="pi-01",
        round_id="r-7",
        model="har",
        base_version=3,
        num_examples=120,
        codec=CodecSpec(name=codec, topk_ratio=ratio),
        metrics={"loss": 0.25},
    )


def samples(compress: bool) -> dict[str, bytes]:
    delta = {
        "fc.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "steps": np.array(9),
    }
    update, _ = encode_update(update_header(), delta, compress=compress)
    data = encode_data(
        DataBatch(fleet="farm", device_id="pi-01", stream="imu", num_samples=2),
        {"x": np.ones((2, 6), dtype=np.float32), "y": np.array([1, 0], dtype=np.int64)},
        compress=compress,
    )
    status = encode_message(Status(fleet="farm", device_id="pi-01", online=True, cpu_percent=12.5))
    round_ = encode_message(
        RoundAnnouncement(
            fleet="farm",
            round_id="r-7",
            model="har",
            base_version=3,
            deadline=1.8e9,
            training=TrainingConfig(epochs=2, codec=CodecSpec(name="topk", topk_ratio=0.1)),
        )
    )
    release = encode_message(
        ReleaseManifest(
            fleet="farm",
            model="har",
            version=4,
            key_id="k1",
            files=[
                ModelFile(
                    name="har.onnx",
                    format="onnx",
                    quantization="fp32",
                    sha256=hashlib.sha256(FILE_BYTES.tobytes()).hexdigest(),
                    size=FILE_BYTES.size,
                )
            ],
        ),
        {"har.onnx": FILE_BYTES},
        compress=compress,
    )
    command = encode_message(
        Command(fleet="farm", device_id="pi-01", command="train_now", args={"epochs": 1})
    )
    return {
        "update": update,
        "data": data,
        "status": status,
        "round": round_,
        "release": release,
        "command": command,
    }
