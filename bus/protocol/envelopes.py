"""The message headers: one frozen, strictly validated class per kind, with a schema version.

Unknown fields are rejected (a typo never passes silently), ids and names are checked against
the same rules as topics, and numbers are range-checked so a receiver never has to.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, Self, TypeVar

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    model_validator,
)

from bus.errors import ValidationError
from bus.ids import MESSAGE_ID_PATTERN, new_message_id

SCHEMA_VERSION = 1
MAX_ELEMENTS = 2**53
"""Bound on the product of a shape's non-zero dimensions: exact as a JSON number in any language,
and far from numpy's size limit, so an absurd shape is a validation error, not a crash."""

MessageId = Annotated[str, StringConstraints(pattern=MESSAGE_ID_PATTERN)]
Fleet = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=256)]
TensorName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Xxh3 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Metrics = dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], Finite]


class MessageKind(StrEnum):
    UPDATE = "update"
    DATA = "data"
    STATUS = "status"
    ROUND = "round"
    RELEASE = "release"
    COMMAND = "command"
    SEED = "seed"


class CodecName(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    TOPK = "topk"


class CommandName(StrEnum):
    TRAIN_NOW = "train_now"
    REPORT = "report"
    ROLLBACK = "rollback"


DType = Literal["F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
Compression = Literal["none", "zstd"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _unique_names(items: tuple[N, ...]) -> tuple[N, ...]:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"name {item.name!r} appears twice")
        seen.add(item.name)
    return items


def _bounded_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise ValueError(f"the non-zero dimensions multiply to more than 2**53 (got {list(shape)})")
    return shape


def pydantic_error(exc: pydantic.ValidationError, root: str) -> ValidationError:
    """The first problem pydantic found, as `root.field.path: message (got value)`."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] not in {"missing", "extra_forbidden", "value_error"} and not isinstance(
        first.get("input"), dict
    ):
        shown = repr(first.get("input"))
        message += f" (got {shown[:80]})"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem(s)"
    return ValidationError(message, where=f"{root}{path}")


class _Strict(BaseModel):
    # Lax when built in Python (enums from strings, lists for tuples); strict when decoded from the
    # wire, where `decode_message` validates JSON with `strict=True`.
    # No custom __init__ to map errors: pydantic would then call it while decoding, dropping strict
    # mode and the field path. Building a bad header in Python raises pydantic's ValidationError.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PayloadInfo(_Strict):
    """The inline payload as it travels: its size, its checksum, and how to unpack it.

    The checksum guards against corruption, not forgery (the sender computes it), so it is
    XXH3-128, which reads at memory speed, rather than sha256, which would cost an aggregator
    several times the arithmetic it does on the same bytes. Authenticity lives elsewhere: release
    files are named by sha256 in the signed manifest, claim checks by sha256 in `PayloadRef`.
    """

    length: Count
    raw_length: Count
    xxh3_128: Xxh3
    compression: Compression


class PayloadRef(_Strict):
    """A claim check: the payload lives in the object store at `url`."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    sha256: Sha256
    length: Count


class TensorSpec(_Strict):
    """One decoded tensor: what the receiver ends up with, whatever the codec."""

    name: TensorName
    dtype: DType
    shape: Annotated[tuple[Count, ...], Field(max_length=8), AfterValidator(_bounded_shape)]


TensorSpecs = Annotated[tuple[TensorSpec, ...], AfterValidator(_unique_names)]


class CodecSpec(_Strict):
    name: CodecName
    topk_ratio: Annotated[float, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def _ratio_iff_topk(self) -> Self:
        if (self.name is CodecName.TOPK) != (self.topk_ratio is not None):
            raise ValueError("topk_ratio is required for topk and only for topk")
        return self


class Envelope(_Strict):
    """Fields every message carries."""

    schema_version: Literal[1] = Field(1, alias="schema")
    kind: MessageKind
    id: MessageId = Field(default_factory=new_message_id)
    created_at: Finite = Field(default_factory=time.time)
    fleet: Fleet
    payload: PayloadInfo | None = None
    payload_ref: PayloadRef | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> Self:
        if self.payload is not None and self.payload_ref is not None:
            raise ValueError("a message carries its payload inline or by reference, not both")
        return self


class Privacy(_Strict):
    epsilon: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    delta: Annotated[float, Field(ge=0, le=1)]


class ModelUpdate(Envelope):
    """A device's model delta against the round's base version."""

    kind: Literal[MessageKind.UPDATE] = MessageKind.UPDATE
    device_id: DeviceId
    round_id: Text
    model: Name
    base_version: Count
    num_examples: Annotated[int, Field(ge=1)]
    codec: CodecSpec
    tensors: TensorSpecs = ()
    metrics: Metrics = Field(default_factory=dict)
    privacy: Privacy | None = None


class DataBatch(Envelope):
    """Raw samples, sent only where the fleet policy lets data leave the device."""

    kind: Literal[MessageKind.DATA] = MessageKind.DATA
    device_id: DeviceId
    stream: Name
    num_samples: Annotated[int, Field(ge=1)]
    tensors: TensorSpecs = ()
    label_names: Annotated[tuple[Text, ...], Field(max_length=1024)] | None = None


class RejectedRelease(_Strict):
    """The newest release a device refused, and why: fleet operators see it in the status."""

    version: Count
    reason: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Status(Envelope):
    """A heartbeat; the Last Will is one with `online=False`."""

    kind: Literal[MessageKind.STATUS] = MessageKind.STATUS
    device_id: DeviceId
    online: bool
    model: Name | None = None
    model_version: Count | None = None
    buffer_rows: Count = 0
    buffer_bytes: Count = 0
    outbox_messages: Count = 0
    cpu_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    memory_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    temperature_c: Finite | None = None
    on_battery: bool | None = None
    agent_version: Annotated[str, StringConstraints(max_length=64)] = ""
    uptime_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    rejected_release: RejectedRelease | None = None


class TrainingConfig(_Strict):
    epochs: Annotated[int, Field(ge=1)] = 1
    max_steps: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 32
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.01
    fedprox_mu: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    codec: CodecSpec = CodecSpec(name=CodecName.FP32)
    compression: Compression = "none"
    clip_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class Sampling(_Strict):
    rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_devices: Annotated[int, Field(ge=1)] = 1
    devices: tuple[DeviceId, ...] | None = None
    seed: int = 0


class RoundAnnouncement(Envelope):
    kind: Literal[MessageKind.ROUND] = MessageKind.ROUND
    round_id: Text
    model: Name
    base_version: Count
    mode: Literal["sync", "async"] = "sync"
    deadline: Finite
    training: TrainingConfig = TrainingConfig()
    sampling: Sampling = Sampling()


class ModelFile(_Strict):
    """One released file; `url=None` means it rides inline as a U8 tensor named `name`.

    `weights` is the model's parameters with its architecture (models.workflow's weights file):
    what a device that trains starts each round from. Inference-only devices do not fetch it.
    """

    name: FileName
    format: Literal["onnx", "tflite", "weights"]
    quantization: Literal["fp32", "int8"]
    sha256: Sha256
    size: Count
    url: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


class ReleaseManifest(Envelope):
    kind: Literal[MessageKind.RELEASE] = MessageKind.RELEASE
    model: Name
    version: Count
    round_id: Text | None = None
    files: Annotated[tuple[ModelFile, ...], Field(min_length=1), AfterValidator(_unique_names)]
    metrics: Metrics = Field(default_factory=dict)
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    signature: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]+={0,2}$")] | None = None


class ModelSeed(Envelope):
    """Whole model parameters trained outside the rounds (the DDP job on the data stream), offered
    to the trainer of `model` as the base of its next version: the hybrid loop's hand-off."""

    kind: Literal[MessageKind.SEED] = MessageKind.SEED
    model: Name
    source: Name
    """Who trained it, e.g. `ddp-har`; the release's lineage names it."""
    checkpoint: Count
    """The source's checkpoint sequence the parameters come from (a re-sent seed repeats it)."""
    num_examples: Count
    tensors: TensorSpecs = ()
    metrics: Metrics = Field(default_factory=dict)


ArgValue = bool | int | float | str


def _command_args(value: Any) -> dict[str, ArgValue]:
    # One check instead of a pydantic union: a union's errors name each alternative tried.
    if not isinstance(value, dict):
        raise ValueError(f"must be an object (got {type(value).__name__})")
    if len(value) > 64:
        raise ValueError(f"at most 64 arguments (got {len(value)})")
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise ValueError(f"argument names must be 1..64 characters (got {key!r})")
        if not isinstance(item, ArgValue) or (isinstance(item, float) and not math.isfinite(item)):
            raise ValueError(
                f"argument {key!r} must be a string, integer, finite number or boolean "
                f"(got {item!r:.40})"
            )
    return dict(value)


class Command(Envelope):
    kind: Literal[MessageKind.COMMAND] = MessageKind.COMMAND
    device_id: DeviceId
    command: CommandName
    args: Annotated[dict[str, bool | int | float | str], PlainValidator(_command_args)] = Field(
        default_factory=dict
    )


ENVELOPES: dict[MessageKind, type[Envelope]] = {
    MessageKind.UPDATE: ModelUpdate,
    MessageKind.DATA: DataBatch,
    MessageKind.STATUS: Status,
    MessageKind.ROUND: RoundAnnouncement,
    MessageKind.RELEASE: ReleaseManifest,
    MessageKind.COMMAND: Command,
    MessageKind.SEED: ModelSeed,
}

AnyEnvelope = (
    ModelUpdate | DataBatch | Status | RoundAnnouncement | ReleaseManifest | Command | ModelSeed
)


def header_dict(envelope: Envelope) -> dict[str, Any]:
    """The header as JSON-ready values, field names as on the wire."""
    return envelope.model_dump(mode="json", by_alias=True)
