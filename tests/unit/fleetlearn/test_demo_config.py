"""The demo's configs: per data set defaults, refusals that name the way out, and the parts'
configs it builds (the same a user writes for each service)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bus.bridge.config import TopicMap
from bus.protocol import CodecName
from fleetlearn.demo.config import DemoConfig
from fleetlearn.demo.fleet import (
    Endpoints,
    bridge_config,
    device_ids,
    edge_config,
    run_store_url,
    topics_for,
    trainer_config,
)


def _ends(tmp_path: Path, shared: bool = False) -> Endpoints:
    return Endpoints(
        run_id="r1",
        run_dir=tmp_path,
        fleet="demo-r1",
        mqtt_url="mqtt://127.0.0.1:1883",
        log_url="sqlite:///tmp/log.db",
        store_url=(tmp_path / "store").as_uri(),
        topics=topics_for("r1", shared_log=shared),
        private_key=tmp_path / "demo.key",
        keys_dir=tmp_path / "keys",
    )


def test_the_default_is_ten_subjects_of_the_motion_data() -> None:
    config = DemoConfig()
    assert config.chosen_partition == "natural"
    assert [d for d, _ in device_ids(config)][:2] == ["subject-01", "subject-02"]
    assert [s for _, s in device_ids(config)] == list(range(1, 11))
    assert config.plan.holdout == "sessions"


def test_data_sets_without_subjects_default_to_a_label_skewed_split() -> None:
    config = DemoConfig(dataset="mnist", devices=20)
    assert config.chosen_partition == "dirichlet"
    assert [s for _, s in device_ids(config)] == list(range(20))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"devices": 4}, "use --devices 10"),
        ({"dataset": "tweets", "partition": "natural"}, "tweets has no subjects"),
        ({"log_url": "ftp://x"}, "unsupported scheme 'ftp'"),
        ({"store_url": "kafka://x:1"}, "unsupported scheme 'kafka'"),
        ({"mqtt_url": "http://x"}, "unsupported scheme 'http'"),
    ],
)
def test_refusals_name_the_way_out(fields: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        DemoConfig.model_validate(fields)


def test_devices_play_the_training_side_of_the_trainers_split(tmp_path: Path) -> None:
    config = DemoConfig(dataset="mnist", devices=5, alpha=0.5, seed=7)
    ends = _ends(tmp_path)
    edge = edge_config(config, ends, "device-03", 3)
    replay = edge.collectors[0]
    assert replay.kind == "replay"
    assert (replay.dataset, replay.subject, replay.devices) == ("mnist", 3, 5)
    assert (replay.partition, replay.alpha, replay.split_seed) == ("dirichlet", 0.5, 7)
    trainer = trainer_config(config, ends)
    assert (trainer.model.dataset, trainer.model.split_seed) == ("mnist", 7)
    assert trainer.model.holdout == replay.holdout == "rows"
    assert edge.model.name == trainer.model.name == "mnist-cnn"
    assert edge.fleet == trainer.fleet == bridge_config(ends).fleet == "demo-r1"
    assert edge.training.holdout == config.holdback


def test_rounds_carry_the_chosen_codec_and_strategy(tmp_path: Path) -> None:
    config = DemoConfig(strategy="fedprox", codec=CodecName.TOPK, topk_ratio=0.02, rounds=4)
    trainer = trainer_config(config, _ends(tmp_path))
    training = trainer.rounds.training
    assert training.codec.name is CodecName.TOPK
    assert training.codec.topk_ratio == 0.02
    assert training.fedprox_mu > 0
    assert trainer.strategy.name == "fedavg"  # FedProx is FedAvg's server with a device term
    assert trainer.rounds.max_versions == 4
    assert trainer.rounds.target_updates == 10
    adam = trainer_config(DemoConfig(strategy="fedadam"), _ends(tmp_path))
    assert adam.strategy.name == "fedadam"
    assert adam.strategy.server_lr < 1


def test_a_shared_log_and_store_get_names_of_the_runs_own(tmp_path: Path) -> None:
    assert topics_for("r1", shared_log=False) == TopicMap()
    shared = topics_for("r1", shared_log=True)
    assert shared.update == "fleetlearn.r1.updates"
    assert len(set(shared.model_dump().values())) == len(
        TopicMap.model_fields
    )  # every topic its own
    url = "s3://bucket/demo?endpoint=http://127.0.0.1:9000"
    assert run_store_url(url, "r1") == "s3://bucket/demo/r1?endpoint=http://127.0.0.1:9000"
    assert run_store_url("s3://bucket", "r1") == "s3://bucket/r1"
    bridge = bridge_config(_ends(tmp_path, shared=True))
    assert bridge.topics == shared
    assert bridge.downlink
