"""CheckpointStore: bit-exact round trips, pointer last, damage named, pruning, resumed sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pytest

from bus.protocol import RoundAnnouncement, Sampling
from bus.store import ObjectInfo, ObjectStore, open_store
from cloud_trainer.checkpoint import CheckpointError, CheckpointStore, RoundState

Arrays = dict[str, npt.NDArray[Any]]
PREFIX = "checkpoints/m"


class RecordingStore:
    """Delegates to a real store and records every put and delete, in order."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str | None = None
    ) -> ObjectInfo:
        self.calls.append(("put", key))
        return self.inner.put(key, data, content_type=content_type)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'store'}")


def state_fields(version: int = 4, **changes: Any) -> dict[str, Any]:
    announcement = RoundAnnouncement(
        id="0123456789abcdef0123456789abcdef",
        fleet="fleet-a",
        round_id=f"m-v{version:06d}-1",
        model="m",
        base_version=version,
        deadline=1_300.5,
        created_at=1_000.25,
        sampling=Sampling(rate=0.5, min_devices=2, devices=("dev-1", "dev-2"), seed=7),
    )
    fields: dict[str, Any] = {
        "version": version,
        "round": announcement.model_dump(mode="json", by_alias=True),
        "attempt": 1,
        "open_rounds": {f"m-v{version:06d}-1": version},
        "seen": ["m-v000004-1\tfedcba9876543210fedcba9876543210", "m-v000004-1\tm-v000004-1/dev-1"],
        "update_offsets": {0: 17, 1: 3},
        "status_offsets": {0: 99},
        "seed_offsets": {0: 2},
        "devices": {
            "dev-1": {"last_seen_ms": 1_000_000, "online": True, "model_version": 3},
            "dev-2": {"last_seen_ms": 999_000, "online": False, "model_version": None},
        },
    }
    return fields | changes


def model_arrays() -> Arrays:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((3, 4)).astype(np.float32)
    # Values a lossy or text round trip would change: -0.0, a subnormal, NaN, infinities.
    weights[0, :4] = np.array([-0.0, 1e-45, np.nan, np.inf], dtype=np.float32)
    return {
        "layer.weight": weights,
        "layer.bias": np.array([1e-8, -3.5, 2.0**-20], dtype=np.float32),
        "bn.num_batches_tracked": np.array(2**62 + 1, dtype=np.int64),
        "ids": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    }


def optimizer_arrays() -> Arrays:
    return {
        "m/layer.weight": np.full((3, 4), 0.125, dtype=np.float32),
        "v/layer.weight": np.full((3, 4), 1e-30, dtype=np.float32),
    }


def assert_bit_exact(got: Arrays, want: Arrays) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name


def test_no_checkpoint_loads_none(store: ObjectStore) -> None:
    checkpoints = CheckpointStore(store, "m")
    assert checkpoints.load() is None
    assert checkpoints.load_pointer_seq() is None


def test_round_trip_is_bit_exact(store: ObjectStore) -> None:
    checkpoints = CheckpointStore(store, "m")
    seq = checkpoints.save(state_fields(), model_arrays(), optimizer_arrays())
    assert seq == 0

    loaded = CheckpointStore(store, "m").load()
    assert loaded is not None
    assert_bit_exact(loaded.model, model_arrays())
    assert_bit_exact(loaded.optimizer, optimizer_arrays())
    hashes = {"model_sha256", "optimizer_sha256"}
    assert loaded.state.model_dump(exclude=hashes) == state_fields()
    assert loaded.state.update_offsets == {0: 17, 1: 3}  # int keys survive JSON
    assert loaded.state.status_offsets == {0: 99}
    assert loaded.state.seed_offsets == {0: 2}
    assert loaded.state.devices["dev-2"].online is False
    assert loaded.state.announcement().sampling.devices == ("dev-1", "dev-2")
    assert len(loaded.state.model_sha256) == len(loaded.state.optimizer_sha256) == 64


def test_loaded_arrays_are_writable_copies(store: ObjectStore) -> None:
    CheckpointStore(store, "m").save(state_fields(), model_arrays(), {})
    loaded = CheckpointStore(store, "m").load()
    assert loaded is not None
    loaded.model["layer.bias"][0] = 5.0  # a view into the read buffer would refuse this
    assert loaded.optimizer == {}


def test_a_round_state_saves_like_its_fields(store: ObjectStore) -> None:
    state = RoundState.model_validate(
        state_fields() | {"model_sha256": "stale", "optimizer_sha256": "stale"}
    )
    CheckpointStore(store, "m").save(state, model_arrays(), optimizer_arrays())
    loaded = CheckpointStore(store, "m").load()
    assert loaded is not None
    # The hashes are the store's own, not the ones handed in.
    assert loaded.state.model_sha256 != "stale"
    assert loaded.state.model_dump(exclude={"model_sha256", "optimizer_sha256"}) == (
        state.model_dump(exclude={"model_sha256", "optimizer_sha256"})
    )


def test_pointer_is_written_after_every_other_object(store: ObjectStore) -> None:
    recording = RecordingStore(store)
    checkpoints = CheckpointStore(recording, "m", keep=1)
    for version in range(3):
        recording.calls.clear()
        checkpoints.save(state_fields(version), model_arrays(), optimizer_arrays())
        puts = [key for op, key in recording.calls if op == "put"]
        base = f"{PREFIX}/{version:010d}"
        assert puts == [
            f"{base}/model.fltensors",
            f"{base}/optimizer.fltensors",
            f"{base}/state.json",
            f"{PREFIX}/latest.json",
        ]
        # Pruning, if any, comes only after the pointer names the new checkpoint.
        pointer_at = recording.calls.index(("put", f"{PREFIX}/latest.json"))
        deletes = [i for i, (op, _) in enumerate(recording.calls) if op == "delete"]
        assert all(i > pointer_at for i in deletes)
        assert bool(deletes) == (version > 0)


@pytest.mark.parametrize("name", ["model.fltensors", "optimizer.fltensors", "state.json"])
def test_damaged_object_fails_naming_its_key(store: ObjectStore, name: str) -> None:
    CheckpointStore(store, "m").save(state_fields(), model_arrays(), optimizer_arrays())
    key = f"{PREFIX}/{0:010d}/{name}"
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0x01  # one bit flipped, same length
    store.put(key, bytes(data))

    with pytest.raises(CheckpointError, match=key):
        CheckpointStore(store, "m").load()


def test_damaged_pointer_fails_naming_it(store: ObjectStore) -> None:
    CheckpointStore(store, "m").save(state_fields(), model_arrays(), optimizer_arrays())
    store.put(f"{PREFIX}/latest.json", b'{"seq": 0}')
    with pytest.raises(CheckpointError, match=f"{PREFIX}/latest.json"):
        CheckpointStore(store, "m").load()


def test_only_the_newest_keep_checkpoints_remain(store: ObjectStore) -> None:
    checkpoints = CheckpointStore(store, "m", keep=2)
    seqs = [
        checkpoints.save(state_fields(version), model_arrays(), optimizer_arrays())
        for version in range(5)
    ]
    assert seqs == [0, 1, 2, 3, 4]
    remaining = sorted(store.list(f"{PREFIX}/"))
    assert remaining == sorted(
        [f"{PREFIX}/latest.json"]
        + [
            f"{PREFIX}/{seq:010d}/{name}"
            for seq in (3, 4)
            for name in ("model.fltensors", "optimizer.fltensors", "state.json")
        ]
    )
    loaded = CheckpointStore(store, "m").load()
    assert loaded is not None
    assert loaded.state.version == 4


def test_sequence_continues_in_a_new_checkpoint_store(store: ObjectStore) -> None:
    first = CheckpointStore(store, "m")
    assert first.save(state_fields(0), model_arrays(), {}) == 0
    assert first.save(state_fields(1), model_arrays(), {}) == 1

    restarted = CheckpointStore(store, "m")
    assert restarted.load_pointer_seq() == 1
    assert restarted.save(state_fields(2), model_arrays(), {}) == 2

    resumed = CheckpointStore(store, "m")
    loaded = resumed.load()
    assert loaded is not None
    assert loaded.state.version == 2
    assert resumed.save(state_fields(3), model_arrays(), {}) == 3


def test_models_do_not_share_checkpoints(store: ObjectStore) -> None:
    CheckpointStore(store, "m").save(state_fields(), model_arrays(), {})
    assert CheckpointStore(store, "other").load() is None
