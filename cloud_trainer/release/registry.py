"""The model registry: one JSON record per released version in the object store, and a pointer.

Layout, per model:

    registry/{model}/v{version:06d}.json   the record (RegistryEntry)
    registry/{model}/latest.json           {"version": N, "record": "registry/{model}/v….json"}
    models/{model}/v{version:06d}/{file}   the released files, release.json and manifest.json

`record` writes the version's record before it moves the pointer, so a reader that follows
`latest.json` always finds a complete record (the files were uploaded before either). The
pointer never moves backwards: recording an older version again (a retry) leaves it alone.
Every key is built here and nowhere else.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal, Self, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from bus.errors import ObjectNotFound, ValidationError
from bus.protocol import ReleaseManifest
from bus.protocol.envelopes import DeviceId, MessageId, Name, pydantic_error
from bus.store import ObjectStore
from bus.topics import check_model_name

REGISTRY_PREFIX = "registry"
MODELS_PREFIX = "models"
_RECORD_NAME = re.compile(r"^v(\d{6,})\.json$")

Finite = Annotated[float, Field(allow_inf_nan=False)]
Version = Annotated[int, Field(ge=0)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
M = TypeVar("M", bound=BaseModel)


def record_key(model: str, version: int) -> str:
    return f"{REGISTRY_PREFIX}/{check_model_name(model)}/v{version:06d}.json"


def latest_key(model: str) -> str:
    return f"{REGISTRY_PREFIX}/{check_model_name(model)}/latest.json"


def object_key(model: str, version: int, name: str) -> str:
    """Where a released file (or the version's release.json / manifest.json) lives."""
    return f"{MODELS_PREFIX}/{check_model_name(model)}/v{version:06d}/{name}"


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Lineage(_Record):
    """What a global model was made from: the round, the updates aggregated and their senders."""

    round_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None
    update_ids: tuple[MessageId, ...] = Field(description="ids of the update messages aggregated")
    device_ids: tuple[DeviceId, ...] = Field(description="devices whose updates were aggregated")
    strategy: Name = Field(description="aggregation strategy, e.g. fedavg")


class RegistryEntry(_Record):
    """One released version as the registry records it."""

    schema_version: Literal[1] = 1
    model: Name
    version: Version
    created_at: Finite = Field(description="seconds since the epoch, when the trainer recorded it")
    round_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None
    parent_version: Version | None = Field(description="the version this one was trained from")
    strategy: Name
    metrics: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], Finite]
    lineage: Lineage
    manifest: ReleaseManifest = Field(description="the signed release manifest, as published")
    files: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], Key] = Field(
        description="object key of every uploaded file, release.json and manifest.json included"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.manifest.model, self.manifest.version) != (self.model, self.version):
            raise ValueError(
                f"the manifest is for {self.manifest.model} v{self.manifest.version}, "
                f"the record for {self.model} v{self.version}"
            )
        missing = sorted({f.name for f in self.manifest.files} - set(self.files))
        if missing:
            raise ValueError(f"manifest files without an object key: {missing}")
        return self


class _Pointer(_Record):
    version: Version
    record: Key


class Registry:
    """Read and write registry records in an object store (S3 or a directory)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def record(self, entry: RegistryEntry) -> str:
        """Write `entry`'s record, then move `latest.json` to it unless a newer one is there."""
        key = record_key(entry.model, entry.version)
        body = entry.model_dump_json(indent=2, by_alias=True).encode()
        self.store.put(key, body, content_type="application/json")
        current = self._pointer(entry.model)
        if current is None or entry.version >= current.version:
            pointer = _Pointer(version=entry.version, record=key)
            self.store.put(
                latest_key(entry.model),
                pointer.model_dump_json().encode(),
                content_type="application/json",
            )
        return key

    def get(self, model: str, version: int) -> RegistryEntry:
        """The record of `model` `version`; ObjectNotFound if there is none."""
        key = record_key(model, version)
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            raise ObjectNotFound(f"no registry record for {model} v{version} ({key})") from None
        entry = _parse(RegistryEntry, data, key)
        if (entry.model, entry.version) != (model, version):
            raise ValidationError(
                f"holds {entry.model} v{entry.version}, not {model} v{version}", where=key
            )
        return entry

    def latest(self, model: str) -> RegistryEntry | None:
        """The record `latest.json` points at; None before the first release."""
        pointer = self._pointer(model)
        if pointer is None:
            return None
        if pointer.record != record_key(model, pointer.version):
            raise ValidationError(
                f"points at {pointer.record!r}, not the record of v{pointer.version}",
                where=latest_key(model),
            )
        return self.get(model, pointer.version)

    def versions(self, model: str) -> list[int]:
        """Every version with a record, ascending."""
        prefix = f"{REGISTRY_PREFIX}/{check_model_name(model)}/"
        found = (_RECORD_NAME.match(key.removeprefix(prefix)) for key in self.store.list(prefix))
        return sorted(int(match.group(1)) for match in found if match)

    def _pointer(self, model: str) -> _Pointer | None:
        key = latest_key(model)
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            return None
        return _parse(_Pointer, data, key)


def _parse(cls: type[M], data: bytes, key: str) -> M:
    """Validate what was read back; a damaged object is a ValidationError naming its key."""
    try:
        return cls.model_validate_json(data)
    except pydantic.ValidationError as exc:
        error = pydantic_error(exc, "record")
        raise ValidationError(
            f"damaged registry object: {error.where}: {error.reason}", where=key
        ) from exc
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValidationError(f"damaged registry object: {exc}", where=key) from exc
