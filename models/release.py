"""A model as the fleet receives it: files (ONNX for inference, weights for training), a
manifest listing their sizes and hashes, and the fleet key's Ed25519 signature over it.

Small files ride inline in the release message; large ones are named by URL and fetched by the
device, which checks them against the signed manifest either way.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.protocol import ModelFile, ReleaseManifest, encode_message, signing_bytes
from models.export.onnx_export import export_onnx
from models.workflow import WeightsFile, save_weights

WEIGHTS_NAME = "weights.fltensors"
ONNX_NAME = "model.onnx"


def model_files(
    module: torch.nn.Module,
    *,
    architecture: str,
    config: dict[str, Any],
    example: npt.NDArray[Any],
    directory: Path,
    dataset: str = "",
    preprocessing: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Literal["onnx", "tflite", "weights"], bytes]]:
    """The ONNX file devices run and the weights file training devices start from."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(module, example, directory / ONNX_NAME)
    weights = WeightsFile(module, architecture, dict(config), dataset, 0)
    weights_path = save_weights(directory / WEIGHTS_NAME, weights, dict(preprocessing or {}))
    return {
        ONNX_NAME: ("onnx", onnx_path.read_bytes()),
        WEIGHTS_NAME: ("weights", weights_path.read_bytes()),
    }


def signed_manifest(
    *,
    fleet: str,
    model: str,
    version: int,
    files: Mapping[str, tuple[Literal["onnx", "tflite", "weights"], bytes]],
    key: Ed25519PrivateKey,
    key_id: str,
    urls: Mapping[str, str] | None = None,
    round_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ReleaseManifest:
    """The manifest over `files` (inline unless a URL is given for a name), signed."""
    specs = tuple(
        ModelFile(
            name=name,
            format=fmt,
            quantization="fp32",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            url=(urls or {}).get(name),
        )
        for name, (fmt, data) in files.items()
    )
    unsigned = ReleaseManifest(
        fleet=fleet,
        model=model,
        version=version,
        round_id=round_id,
        files=specs,
        metrics=dict(metrics or {}),
        key_id=key_id,
    )
    signature = base64.b64encode(key.sign(signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature})


def encode_release(
    manifest: ReleaseManifest,
    files: Mapping[str, tuple[str, bytes]],
    *,
    compress: bool = True,
) -> bytes:
    """The release message: the manifest, with its inline files as U8 tensors."""
    inline = {
        spec.name: np.frombuffer(files[spec.name][1], dtype=np.uint8)
        for spec in manifest.files
        if spec.url is None
    }
    return encode_message(manifest, inline or None, compress=compress)
