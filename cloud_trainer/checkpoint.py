"""Crash-exact checkpoints in the object store: objects first, then the pointer.

A checkpoint is the global model, the server optimizer's state, the round state and the log
offsets all of that covers. Its objects go under a fresh sequence number; only then is
`latest.json` rewritten to name them, so a trainer killed at any moment finds either the old
checkpoint or the new one whole (a single PUT replaces an object atomically on S3 and on the
file store). Every object's sha256 is in the pointer or the state, so damage is detected and
named, never half-loaded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import ObjectNotFound, ProtocolError
from bus.protocol import RoundAnnouncement, read_tensors, write_tensors
from bus.store import ObjectStore

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)

Arrays = dict[str, npt.NDArray[Any]]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back as written; the message names the object."""


class DeviceSeen(BaseModel):
    """What the coordinator remembers of a device's last status (for eligibility)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last_seen_ms: int
    online: bool
    model_version: int | None = None


class RoundState(BaseModel):
    """Everything but the tensors; JSON in `state.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=0, description="the global model's version")
    round: dict[str, Any] = Field(description="the open round's announcement, as on the wire")
    attempt: int = Field(0, ge=0, description="rounds abandoned at this version so far")
    open_rounds: dict[str, int] = Field(
        default_factory=dict, description="round id -> base version still accepted"
    )
    seen: list[str] = Field(default_factory=list, description="ids already counted and still open")
    update_offsets: dict[int, int] = Field(description="updates topic: partition -> next offset")
    status_offsets: dict[int, int] = Field(default_factory=dict)
    seed_offsets: dict[int, int] = Field(
        default_factory=dict, description="seeds topic: partition -> next offset"
    )
    devices: dict[str, DeviceSeen] = Field(default_factory=dict)
    model_sha256: str
    optimizer_sha256: str

    def announcement(self) -> RoundAnnouncement:
        return RoundAnnouncement.model_validate(self.round)


@dataclass
class Checkpoint:
    state: RoundState
    model: Arrays
    optimizer: Arrays = field(default_factory=dict)


class _Pointer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0)
    state: str
    state_sha256: str


class CheckpointStore:
    """Checkpoints of one model under `checkpoints/{model}/` in an object store."""

    def __init__(self, store: ObjectStore, model: str, *, keep: int = 3) -> None:
        self.store = store
        self.prefix = f"checkpoints/{model}"
        self.keep = keep
        self._seq: int | None = None

    @property
    def pointer_key(self) -> str:
        return f"{self.prefix}/latest.json"

    def save(
        self,
        state: RoundState | Mapping[str, Any],
        model: Mapping[str, npt.NDArray[Any]],
        optimizer: Mapping[str, npt.NDArray[Any]],
    ) -> int:
        """Write a checkpoint; returns its sequence number. `state` hashes are filled in here."""
        seq = self._next_seq()
        base = f"{self.prefix}/{seq:010d}"
        model_bytes = write_tensors(model)
        optimizer_bytes = write_tensors(optimizer) if optimizer else b""
        fields = (
            state.model_dump(mode="json") if isinstance(state, RoundState) else dict(state)
        ) | {
            "model_sha256": _sha(model_bytes),
            "optimizer_sha256": _sha(optimizer_bytes),
        }
        checked = RoundState.model_validate(fields)
        state_bytes = checked.model_dump_json().encode()
        self.store.put(f"{base}/model.fltensors", model_bytes)
        self.store.put(f"{base}/optimizer.fltensors", optimizer_bytes)
        self.store.put(f"{base}/state.json", state_bytes)
        pointer = _Pointer(seq=seq, state=f"{base}/state.json", state_sha256=_sha(state_bytes))
        self.store.put(self.pointer_key, pointer.model_dump_json().encode())
        self._seq = seq
        self._prune(seq)
        return seq

    def load(self) -> Checkpoint | None:
        """The latest whole checkpoint, or None if there is none yet."""
        if not self.store.exists(self.pointer_key):
            return None
        pointer = self._read_model(_Pointer, self.pointer_key, self.store.get(self.pointer_key))
        state_bytes = self._get_checked(pointer.state, pointer.state_sha256)
        state = self._read_model(RoundState, pointer.state, state_bytes)
        base = pointer.state.rsplit("/", 1)[0]
        model = self._tensors(f"{base}/model.fltensors", state.model_sha256)
        optimizer = self._tensors(f"{base}/optimizer.fltensors", state.optimizer_sha256)
        self._seq = pointer.seq
        return Checkpoint(state, model, optimizer)

    def _tensors(self, key: str, sha256: str) -> Arrays:
        data = self._get_checked(key, sha256)
        if not data:
            return {}
        try:
            return {name: np.array(value) for name, value in read_tensors(memoryview(data)).items()}
        except ProtocolError as exc:
            raise CheckpointError(f"{key}: {exc}") from exc

    def _get_checked(self, key: str, sha256: str) -> bytes:
        try:
            data = self.store.get(key)
        except ObjectNotFound as exc:
            raise CheckpointError(f"{key}: named by the checkpoint but missing") from exc
        if _sha(data) != sha256:
            raise CheckpointError(f"{key}: sha256 does not match the checkpoint's record")
        return data

    @staticmethod
    def _read_model(cls: type[_M], key: str, data: bytes) -> _M:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise CheckpointError(f"{key}: {where}: {first['msg']}") from exc

    def _next_seq(self) -> int:
        if self._seq is None:
            existing = self.load_pointer_seq()
            self._seq = existing if existing is not None else -1
        return self._seq + 1

    def load_pointer_seq(self) -> int | None:
        if not self.store.exists(self.pointer_key):
            return None
        return self._read_model(_Pointer, self.pointer_key, self.store.get(self.pointer_key)).seq

    def _prune(self, newest: int) -> None:
        """Delete checkpoints older than the `keep` newest (a failure here loses nothing)."""
        for key in self.store.list(f"{self.prefix}/"):
            part = key[len(self.prefix) + 1 :].split("/", 1)[0]
            if part.isdigit() and int(part) <= newest - self.keep:
                try:
                    self.store.delete(key)
                except Exception as exc:  # noqa: BLE001 - pruning is best effort, logged
                    log.warning(
                        "could not delete old checkpoint object",
                        extra={"key": key, "reason": str(exc)},
                    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
