"""DDP checkpoints in the object store: every rank's objects first, then one pointer.

Under `ddp/{job}/`:

- `{seq:08d}/state.pt` — rank 0: model, optimizer and scheduler state, the step;
- `{seq:08d}/rank-{r}.json` — each rank: the next offset of every partition it owns, the
  (partition, offset) runs it trained since the previous checkpoint, its RNG state;
- `latest.json` — written by rank 0 only after every rank's object is stored: the sequence,
  the step, every object's sha256, the merged offsets and the chain of committed sequences.

A job killed at any moment finds the previous pointer whole, and re-reads from its offsets
what the killed attempt had trained since: a record counts in the model exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from bus.errors import ObjectNotFound
from bus.store import ObjectStore
from cloud_trainer.checkpoint import CheckpointError


class RankRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(ge=0)
    world: int = Field(ge=1)
    offsets: dict[int, int] = Field(description="partition -> next offset, for its partitions")
    trained: list[list[int]] = Field(description="[partition, first, end) runs since last time")
    rng: str = Field(description="torch CPU generator state, base64")
    samples: int = Field(ge=0, description="samples trained since the previous checkpoint")
    loss_sum: float = Field(description="their summed loss, for the loss curve")


class Pointer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sequence: int = Field(ge=1)
    step: int = Field(ge=0)
    world: int = Field(ge=1)
    restarts: int = Field(ge=0, description="torchrun restarts seen by the attempt that wrote it")
    offsets: dict[int, int]
    objects: dict[str, str] = Field(description="object key -> sha256")
    chain: list[tuple[int, int]] = Field(
        description="(sequence, world) of every committed checkpoint, oldest first"
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DdpCheckpoints:
    def __init__(self, store: ObjectStore, job: str, *, keep_states: int = 3) -> None:
        self.store = store
        self.root = f"ddp/{job}"
        self.keep_states = keep_states

    def key(self, sequence: int, name: str) -> str:
        return f"{self.root}/{sequence:08d}/{name}"

    @property
    def pointer_key(self) -> str:
        return f"{self.root}/latest.json"

    # -- writing (every rank, then rank 0) ----------------------------------------------------

    def put_state(self, sequence: int, state: dict[str, Any]) -> tuple[str, str]:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        key = self.key(sequence, "state.pt")
        # The store hashes while it streams the upload: no copy, no second pass.
        return key, self.store.put(key, buffer).sha256

    def put_rank(self, sequence: int, record: RankRecord) -> tuple[str, str]:
        key = self.key(sequence, f"rank-{record.rank}.json")
        return key, self.store.put(key, record.model_dump_json().encode()).sha256

    def commit(self, pointer: Pointer) -> None:
        """The pointer last: until it is rewritten, the previous checkpoint stands."""
        self.store.put(self.pointer_key, pointer.model_dump_json(indent=1).encode())
        for old, _ in pointer.chain[: -self.keep_states]:
            key = self.key(old, "state.pt")
            if self.store.exists(key):
                self.store.delete(key)

    # -- reading ------------------------------------------------------------------------------

    def pointer(self) -> Pointer | None:
        try:
            data = self.store.get(self.pointer_key)
        except ObjectNotFound:
            return None
        try:
            return Pointer.model_validate_json(data)
        except PydanticError as exc:
            raise CheckpointError(
                f"{self.pointer_key}: not a DDP checkpoint pointer: {exc}"
            ) from exc

    def _checked(self, pointer: Pointer, key: str) -> bytes:
        try:
            data = self.store.get(key)
        except ObjectNotFound as exc:
            raise CheckpointError(f"{key} is missing from checkpoint {pointer.sequence}") from exc
        if _sha(data) != pointer.objects.get(key):
            raise CheckpointError(f"{key} does not match its sha256 in {self.pointer_key}")
        return data

    def state(self, pointer: Pointer) -> dict[str, Any]:
        data = self._checked(pointer, self.key(pointer.sequence, "state.pt"))
        loaded: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
        return loaded

    def rank(self, pointer: Pointer, sequence: int, rank: int) -> RankRecord:
        key = self.key(sequence, f"rank-{rank}.json")
        data = self._checked(pointer, key) if sequence == pointer.sequence else self.store.get(key)
        return RankRecord.model_validate_json(data)

    def history(self, pointer: Pointer) -> list[RankRecord]:
        """Every rank record of every committed checkpoint (what the job has trained)."""
        return [
            self.rank(pointer, sequence, rank)
            for sequence, world in pointer.chain
            for rank in range(world)
        ]


def rng_state() -> str:
    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()


def set_rng_state(encoded: str) -> None:
    raw = bytearray(base64.b64decode(encoded))
    torch.set_rng_state(torch.frombuffer(raw, dtype=torch.uint8).clone())
