"""The model manifest: everything a device needs to trust and feed an exported model.

Files are described with the wire protocol's `ModelFile`, so a release message can carry the
manifest's file list as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bus.errors import ValidationError
from bus.protocol import ModelFile

MANIFEST_NAME = "manifest.json"


class TensorSignature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: list[int | None] = Field(description="None marks a dynamic axis (the batch)")
    dtype: str
    scale: float | None = Field(None, description="int8 input/output quantization scale")
    zero_point: int | None = None


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[TensorSignature]
    outputs: list[TensorSignature]


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=0)
    architecture: str
    classes: list[str]
    signatures: dict[str, Signature] = Field(
        description="per file name: input and output names, shapes, dtypes, int8 scales"
    )
    preprocessing: dict[str, Any] = Field(
        default_factory=dict, description="normalisation statistics, window length, vocabulary"
    )
    files: list[ModelFile]
    weights_sha256: str | None = Field(
        None, description="sha256 of weights.safetensors beside the files, for `models check`"
    )
    checks: list[dict[str, Any]] = Field(
        default_factory=list, description="parity and accuracy reports, one per runtime and mode"
    )


def describe_file(
    path: Path, *, fmt: Literal["onnx", "tflite"], quantization: Literal["fp32", "int8"]
) -> ModelFile:
    data = path.read_bytes()
    return ModelFile(
        name=path.name,
        format=fmt,
        quantization=quantization,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def write_manifest(directory: Path, manifest: ModelManifest) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path) -> ModelManifest:
    """Read and verify: every listed file exists with the recorded size and sha256."""
    path = directory / MANIFEST_NAME
    try:
        manifest = ModelManifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", where=str(path)) from exc
    except ValueError as exc:
        raise ValidationError(f"not a valid manifest: {exc}", where=str(path)) from exc
    for entry in manifest.files:
        data = (directory / entry.name).read_bytes() if (directory / entry.name).is_file() else None
        if data is None:
            raise ValidationError(
                "listed in the manifest but missing", where=f"{directory}/{entry.name}"
            )
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ValidationError(
                "size or sha256 differs from the manifest", where=f"{directory}/{entry.name}"
            )
    return manifest
