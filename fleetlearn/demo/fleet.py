"""The demo's parts as their own configs: one EdgeConfig per device, the bridge's, the trainer's.

Nothing here runs anything: the configs are the same a user writes in `device.yaml`,
`bridge.yaml` and `trainer.yaml`, which is the point — the demo is the product, wired together
on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bus.bridge.config import BridgeConfig, TopicMap
from bus.protocol import CodecName, CodecSpec, TrainingConfig
from cloud_trainer.config import TrainerConfig
from cloud_trainer.strategies import StrategyConfig
from edge_agent.config import EdgeConfig
from fleetlearn.demo.config import FEDPROX_MU, SERVER_LR, DemoConfig

KEY_ID = "demo"
PARTITIONS = 3


@dataclass(frozen=True)
class Endpoints:
    """Where this run's parts meet: URLs, topics and names no earlier run shares."""

    run_id: str
    run_dir: Path
    fleet: str
    mqtt_url: str
    log_url: str
    store_url: str
    topics: TopicMap
    private_key: Path
    keys_dir: Path


def model_name(config: DemoConfig) -> str:
    return f"{config.dataset}-{config.plan.architecture}"


def topics_for(run_id: str, shared_log: bool) -> TopicMap:
    """The default topic names on a log of the run's own; on a shared Kafka, names of the run's
    own, so a demo never reads an earlier run's rounds or updates."""
    if not shared_log:
        return TopicMap()
    base = f"fleetlearn.{run_id}"
    return TopicMap(
        update=f"{base}.updates",
        data=f"{base}.data",
        status=f"{base}.status",
        rounds=f"{base}.rounds",
        releases=f"{base}.releases",
        dlq=f"{base}.dlq",
        seeds=f"{base}.seeds",
    )


def run_store_url(url: str, run_id: str) -> str:
    """`url` with the run's own folder appended to its path (query, e.g. an endpoint, kept)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + f"/{run_id}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def device_ids(config: DemoConfig) -> list[tuple[str, int]]:
    """(device id, subject or share index) for every device."""
    if config.chosen_partition == "natural":
        return [(f"subject-{s:02d}", s) for s in range(1, config.devices + 1)]
    return [(f"device-{i:02d}", i) for i in range(config.devices)]


def training_config(config: DemoConfig) -> TrainingConfig:
    codec = CodecSpec(
        name=config.codec,
        topk_ratio=config.topk_ratio if config.codec is CodecName.TOPK else None,
    )
    return TrainingConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.chosen_learning_rate,
        fedprox_mu=FEDPROX_MU if config.strategy == "fedprox" else 0.0,
        codec=codec,
        compression="zstd" if config.compress else "none",
    )


def strategy_config(config: DemoConfig) -> StrategyConfig:
    name = "fedavg" if config.strategy == "fedprox" else config.strategy  # FedProx: device side
    return StrategyConfig(name=name, server_lr=SERVER_LR.get(name, 1.0))


def edge_config(config: DemoConfig, ends: Endpoints, device_id: str, subject: int) -> EdgeConfig:
    plan = config.plan
    natural = config.chosen_partition == "natural"
    return EdgeConfig.model_validate(
        {
            "device_id": device_id,
            "fleet": ends.fleet,
            "mqtt_url": ends.mqtt_url,
            "data_dir": ends.run_dir / "devices" / device_id,
            "heartbeat_s": 2.0,
            "collectors": [
                {
                    "kind": "replay",
                    "dataset": plan.source,
                    "subject": subject,
                    "devices": None if natural else config.devices,
                    "partition": config.chosen_partition,
                    "alpha": config.alpha,
                    "split_seed": config.seed,
                    "holdout": plan.holdout,
                    "shuffle": True,
                    "rate_hz": config.rate_hz,
                    "seed": config.seed,
                }
            ],
            "model": {
                "name": model_name(config),
                "runtime": "onnx",
                "keys_dir": ends.keys_dir,
                "health_samples": config.holdback,
            },
            "training": {
                "min_samples": 8,
                "holdout": config.holdback,
                # A demo on a laptop is busy by design: train whatever the load.
                "gate": {"max_cpu_percent": 100, "allow_on_battery": True, "retry_s": 2.0},
            },
        }
    )


def bridge_config(ends: Endpoints) -> BridgeConfig:
    return BridgeConfig(
        mqtt_url=ends.mqtt_url,
        log_url=ends.log_url,
        fleet=ends.fleet,
        client_id=f"fleetlearn-bridge-{ends.run_id}",
        topics=ends.topics,
        partitions=PARTITIONS,
        store_url=ends.store_url,
        downlink=True,
    )


def trainer_config(config: DemoConfig, ends: Endpoints) -> TrainerConfig:
    plan = config.plan
    return TrainerConfig.model_validate(
        {
            "fleet": ends.fleet,
            "log_url": ends.log_url,
            "store_url": ends.store_url,
            "topics": ends.topics.model_dump(),
            "model": {
                "name": model_name(config),
                "architecture": plan.architecture,
                "dataset": plan.source,
                "split_seed": config.seed,
                "holdout": plan.holdout,
                "init_seed": config.seed,
            },
            "rounds": {
                "mode": "sync",
                "max_versions": config.rounds,
                "deadline_s": config.round_deadline_s,
                "min_updates": max(1, config.devices // 2),
                "target_updates": config.devices,
                "status_ttl_s": 30.0,
                "training": training_config(config).model_dump(mode="json"),
                "late_grace_s": 0.5,
            },
            "strategy": strategy_config(config).model_dump(),
            "release": {"private_key": ends.private_key, "key_id": KEY_ID},
            "partitions": PARTITIONS,
            "poll_s": 0.05,
        }
    )
