"""The hybrid loop's hand-off, without a network: a DDP job's model offered as a `ModelSeed`
message, checked against the trainer's model and adopted as its next version."""

from __future__ import annotations

import numpy as np
import pytest

from bus.errors import ValidationError
from bus.protocol import ModelSeed, decode_message, encode_data
from cloud_trainer.ddp.config import DdpConfig
from cloud_trainer.ddp.seed import seed_id, seed_message
from cloud_trainer.validation import check_seed, model_spec
from tests.unit.cloud_trainer.test_coordinator import (
    FLEET,
    MODEL,
    NOW,
    Arrays,
    coordinator,
    initial_model,
    make_config,
    send,
)


def trained() -> Arrays:
    return {
        "w": np.array([3.0, 4.0], dtype=np.float32),
        "b": np.array([-2.0], dtype=np.float32),
        "steps": np.array([99], dtype=np.int64),
    }


def test_a_seed_round_trips_and_must_carry_tensors() -> None:
    header = ModelSeed(fleet=FLEET, model=MODEL, source="ddp-har", checkpoint=4, num_examples=6_400)
    message = decode_message(encode_data(header, trained(), compress=True))
    assert isinstance(message.envelope, ModelSeed)
    assert message.envelope.checkpoint == 4
    assert [spec.name for spec in message.envelope.tensors] == ["w", "b", "steps"]
    np.testing.assert_array_equal(message.tensors["w"], [3.0, 4.0])
    with pytest.raises(ValidationError, match="payload"):
        encode_data(header, {})


def test_the_seed_becomes_the_next_version_and_drops_the_open_round() -> None:
    config = make_config()
    coord = coordinator(config)
    assert send(coord, "pi-1", w=(1.0, 1.0)) is None  # an update of the round about to go
    coord.optimizer = {"m/w": np.ones(2, np.float32)}
    old_round = coord.round.round_id
    new = coord.adopt(trained(), round_id="ddp-har@4")
    assert (new.version, new.parent_version, coord.version) == (1, 0, 1)
    assert new.participants == 0
    np.testing.assert_array_equal(coord.model["w"], [3.0, 4.0])
    assert coord.model["steps"].dtype == np.int64
    assert coord.optimizer == {}  # moments of the old trajectory do not apply
    assert coord.accepted == 0
    announced = coord.next_round(NOW)
    assert announced.base_version == 1
    assert old_round not in coord.open_rounds
    assert send(coord, "pi-1", round_id=old_round, base_version=0) is not None  # stale now


def test_the_seed_is_copied_not_shared() -> None:
    coord = coordinator(make_config())
    seed = trained()
    coord.adopt(seed, round_id="s@1")
    seed["w"][0] = 100.0
    assert coord.model["w"][0] == 3.0


@pytest.mark.parametrize(
    ("change", "words", "where"),
    [
        ({"w": None}, "missing ['w']", "seed.tensors"),
        ({"extra": np.zeros(1, np.float32)}, "unexpected ['extra']", "seed.tensors"),
        ({"w": np.zeros(3, np.float32)}, "shape [3]", "seed.tensors['w']"),
        ({"w": np.zeros(2, np.int32)}, "floating", "seed.tensors['w']"),
        ({"steps": np.zeros(1, np.float32)}, "integer", "seed.tensors['steps']"),
        ({"b": np.array([np.nan], np.float32)}, "NaN", "seed.tensors['b']"),
    ],
)
def test_a_seed_that_does_not_fit_the_model_is_refused_by_name(
    change: dict[str, np.ndarray | None], words: str, where: str
) -> None:
    seed = {**trained(), **change}
    tensors = {name: value for name, value in seed.items() if value is not None}
    with pytest.raises(ValidationError, match=words.replace("[", r"\[")) as caught:
        check_seed(model_spec(initial_model()), tensors)
    assert caught.value.where == where
    coord = coordinator(make_config())
    with pytest.raises(ValidationError):
        coord.adopt(tensors, round_id="s@1")
    assert coord.version == 0  # nothing moved


def ddp_config(**seed: object) -> DdpConfig:
    return DdpConfig.model_validate(
        {
            "job": "har",
            "log_url": "sqlite:///unused.db",
            "store_url": "file:///unused",
            "model": {"architecture": "logreg", "config": {}, "input_shape": [2]},
            "seed": {"model": MODEL, "fleet": FLEET, **seed},
        }
    )


class NoStore:
    def put(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a small seed rides inline")


def test_the_job_s_seed_message_names_job_and_checkpoint() -> None:
    config = ddp_config()
    message = seed_message(config, trained(), sequence=7, examples=640, store=NoStore())  # type: ignore[arg-type]
    decoded = decode_message(message)
    header = decoded.envelope
    assert isinstance(header, ModelSeed)
    assert (header.model, header.fleet, header.source) == (MODEL, FLEET, "ddp-har")
    assert (header.checkpoint, header.num_examples) == (7, 640)
    assert header.id == seed_id("har", 7) != seed_id("har", 8)  # the same checkpoint: same id
    np.testing.assert_array_equal(decoded.tensors["b"], [-2.0])


def test_seed_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"seed\.model"):
        ddp_config(model="no/slash")
    with pytest.raises(ValueError, match="max_record_bytes"):
        ddp_config(max_record_bytes=10)
