"""Real releases for tests: a small torch model exported to ONNX, its weights file, signed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.protocol import ReleaseManifest
from models.registry import build_model
from models.release import encode_release, model_files, signed_manifest

KEY_ID = "fleet-test"
WIDTH = 12
CLASSES = 3


def write_public_key(key: Ed25519PrivateKey, directory: Path, key_id: str = KEY_ID) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = directory / f"{key_id}.pem"
    path.write_bytes(pem)
    return path


def mlp(seed: int = 0, *, poison: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = {"in_features": WIDTH, "num_classes": CLASSES}
    torch.manual_seed(seed)
    module = build_model("mlp", config)
    if poison:  # a model that loads and runs but answers NaN
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(float("nan"))
    return module, config


def release_message(
    tmp: Path,
    version: int,
    key: Ed25519PrivateKey,
    *,
    fleet: str = "farm",
    model: str = "har",
    poison: bool = False,
    seed: int = 0,
    urls: dict[str, str] | None = None,
) -> tuple[bytes, ReleaseManifest, dict[str, tuple[Any, bytes]]]:
    module, config = mlp(seed, poison=poison)
    files = model_files(
        module,
        architecture="mlp",
        config=config,
        example=np.zeros((1, WIDTH), np.float32),
        directory=tmp / f"release-{version}-{seed}",
    )
    manifest = signed_manifest(
        fleet=fleet, model=model, version=version, files=files, key=key, key_id=KEY_ID, urls=urls
    )
    return encode_release(manifest, files), manifest, files
