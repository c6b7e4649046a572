"""The DDP job's pure parts and its checkpoint store, without a process group or a broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bus.errors import ValidationError
from bus.protocol import DataBatch, Status, encode_data, encode_message
from bus.store import open_store
from cloud_trainer.checkpoint import CheckpointError
from cloud_trainer.ddp.checkpoint import (
    DdpCheckpoints,
    Pointer,
    RankRecord,
    rng_state,
    set_rng_state,
)
from cloud_trainer.ddp.config import DdpConfig
from cloud_trainer.ddp.shards import as_ranges, from_ranges, merge_offsets, partitions_for
from cloud_trainer.ddp.stream import samples_of


@given(st.integers(1, 40), st.integers(1, 9))
def test_shards_are_disjoint_and_cover_every_partition(partitions: int, world: int) -> None:
    shards = [partitions_for(rank, world, range(partitions)) for rank in range(world)]
    flat = [p for shard in shards for p in shard]
    assert sorted(flat) == list(range(partitions))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        partitions_for(2, 2, [0, 1])


@given(st.sets(st.tuples(st.integers(0, 5), st.integers(0, 60))))
def test_ranges_hold_exactly_the_pairs(pairs: set[tuple[int, int]]) -> None:
    runs = as_ranges(sorted(pairs))
    assert sorted(from_ranges(runs)) == sorted(pairs)
    assert len(runs) <= len(pairs)


def test_offsets_merge_and_a_partition_claimed_twice_is_an_error() -> None:
    assert merge_offsets([{0: 5, 2: 7}, {1: 3}]) == {0: 5, 1: 3, 2: 7}
    with pytest.raises(ValueError, match="partition 2 has two offsets"):
        merge_offsets([{2: 7}, {2: 8}])


def _record(x: np.ndarray, y: np.ndarray, samples: int | None = None) -> bytes:
    header = DataBatch(fleet="f", device_id="d-1", stream="imu", num_samples=samples or len(y))
    return encode_data(header, {"x": x, "y": y})


def test_a_data_record_decodes_to_samples_and_labels() -> None:
    x = np.ones((3, 6, 10), np.float32)
    got_x, got_y = samples_of(_record(x, np.array([0, 1, 2])), (6, 10))
    np.testing.assert_array_equal(got_x, x)
    assert got_y.dtype == np.int64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_record(np.ones((2, 6, 10), np.float32), np.array([0, 1]), samples=3), "hold 3"),
        (_record(np.ones((2, 6, 9), np.float32), np.array([0, 1])), r"expected \(6, 10\)"),
        (_record(np.full((2, 6, 10), np.nan, np.float32), np.array([0, 1])), "NaN"),
        (_record(np.ones((2, 6, 10), np.float32), np.array([0.0, 1.0])), "integer labels"),
        (_record(np.ones((2, 6, 10), np.float32), np.array([0, -1])), "negative label"),
        (encode_message(Status(fleet="f", device_id="d-1", online=True)), "not data"),
    ],
)
def test_a_bad_record_says_what_is_wrong(value: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        samples_of(value, (6, 10))


def _pointer(sequence: int, objects: dict[str, str], chain: list[tuple[int, int]]) -> Pointer:
    return Pointer(
        sequence=sequence,
        step=10 * sequence,
        world=1,
        restarts=0,
        offsets={0: 4},
        objects=objects,
        chain=chain,
    )


def test_checkpoints_round_trip_and_prune_old_states(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    checkpoints = DdpCheckpoints(store, "har", keep_states=2)
    assert checkpoints.pointer() is None
    chain: list[tuple[int, int]] = []
    for sequence in (1, 2, 3):
        record = RankRecord(
            rank=0,
            world=1,
            offsets={0: sequence},
            trained=[[0, sequence - 1, sequence]],
            rng=rng_state(),
            samples=16,
            loss_sum=float(sequence),
        )
        objects = dict(
            [
                checkpoints.put_rank(sequence, record),
                checkpoints.put_state(sequence, {"model": {"w": torch.full((2,), sequence)}}),
            ]
        )
        chain.append((sequence, 1))
        checkpoints.commit(_pointer(sequence, objects, list(chain)))
    pointer = checkpoints.pointer()
    assert pointer is not None
    assert pointer.sequence == 3
    assert torch.equal(checkpoints.state(pointer)["model"]["w"], torch.full((2,), 3))
    assert [r.trained for r in checkpoints.history(pointer)] == [
        [[0, 0, 1]],
        [[0, 1, 2]],
        [[0, 2, 3]],
    ]
    assert not store.exists(checkpoints.key(1, "state.pt"))  # pruned: keep_states=2
    assert store.exists(checkpoints.key(1, "rank-0.json"))  # the audit trail stays


def test_a_damaged_state_is_named_not_loaded(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    checkpoints = DdpCheckpoints(store, "har")
    key, sha = checkpoints.put_state(1, {"step": 1})
    checkpoints.commit(_pointer(1, {key: sha}, [(1, 1)]))
    store.put(key, b"not what was written")
    pointer = checkpoints.pointer()
    assert pointer is not None
    with pytest.raises(CheckpointError, match=r"state\.pt does not match its sha256"):
        checkpoints.state(pointer)


def test_the_rng_state_round_trips() -> None:
    saved = rng_state()
    first = torch.rand(3)
    set_rng_state(saved)
    assert torch.equal(torch.rand(3), first)


def test_the_config_needs_an_input_shape_and_a_valid_job_name() -> None:
    base = {"job": "har", "log_url": "sqlite:///x", "store_url": "file:///x"}
    model = {"architecture": "cnn1d", "config": {}, "input_shape": [6, 100]}
    assert DdpConfig.model_validate({**base, "model": model}).topic == "fleetlearn.data"
    with pytest.raises(ValueError, match="input_shape"):
        DdpConfig.model_validate({**base, "model": {**model, "input_shape": []}})
    with pytest.raises(ValueError, match="job"):
        DdpConfig.model_validate({**base, "job": "a b", "model": model})


def test_the_example_config_loads() -> None:
    from cloud_trainer.ddp.config import load_ddp_config

    root = Path(__file__).resolve().parents[3]
    config = load_ddp_config(root / "infra" / "trainer" / "ddp.yaml")
    assert config.model.input_shape == [6, 100]
    assert config.topic == "fleetlearn.data"
