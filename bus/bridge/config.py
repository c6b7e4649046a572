"""The bridge's typed config: YAML plus `FLEETLEARN_BRIDGE__…` environment overrides."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bus.topics import (
    KAFKA_DATA,
    KAFKA_DLQ,
    KAFKA_RELEASES,
    KAFKA_ROUNDS,
    KAFKA_SEEDS,
    KAFKA_STATUS,
    KAFKA_UPDATES,
)


class TopicMap(BaseModel):
    """Which log topic each device channel goes to, and where rounds and releases come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    update: str = KAFKA_UPDATES
    data: str = KAFKA_DATA
    status: str = KAFKA_STATUS
    rounds: str = KAFKA_ROUNDS
    releases: str = KAFKA_RELEASES
    dlq: str = KAFKA_DLQ
    seeds: str = KAFKA_SEEDS
    """Read by the trainer only: DDP jobs' models offered as the next base."""


class BridgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mqtt_url: str = Field(description="broker URL (mqtt:// or mqtts://)")
    log_url: str = Field(description="log URL (kafka:// or sqlite://)")
    fleet: str = Field("default", description="fleet name; the MQTT prefix is fleetlearn/{fleet}")
    prefix: str | None = Field(None, description="MQTT topic prefix, overriding the fleet default")
    client_id: str = Field(
        "fleetlearn-bridge-0",
        description="stable MQTT client id: the persistent session that holds unacked messages",
    )
    share_group: str | None = Field(
        None, description="MQTT 5 shared-subscription group, so several bridges split the load"
    )
    topics: TopicMap = TopicMap()
    partitions: int = Field(6, ge=1, description="partitions of the uplink topics when created")
    max_inflight: int = Field(
        1000,
        ge=1,
        description="messages received but not yet acknowledged; beyond it, stop reading",
    )
    kafka_linger_ms: int = Field(
        50,
        ge=0,
        description=(
            "producer batching delay when the log is Kafka and its URL sets no linger_ms: "
            "the in-flight window hides the latency, and bigger batches cost the brokers "
            "far less CPU (bench/bridge.py)"
        ),
    )
    max_record_bytes: int = Field(
        900_000, ge=1024, description="larger payloads go to the object store (claim check)"
    )
    store_url: str | None = Field(None, description="object store for large payloads")
    downlink: bool = Field(True, description="carry rounds and releases from the log to MQTT")
    metrics_port: int | None = Field(None, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="address for the metrics endpoint")
