"""Typed settings of the Kafka log and the one function that turns them into librdkafka keys.

Kept apart from `bus.log.kafka` so options and URLs can be checked without confluent-kafka
installed, and so the string-keyed config is built in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from bus.errors import ConfigError
from bus.log.base import DEFAULT_MAX_MESSAGE_BYTES, options_from_url
from bus.urls import mask_password, parse_url

SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
Role = Literal["admin", "producer", "consumer"]


@dataclass(frozen=True)
class KafkaOptions:
    """Typed settings of every Kafka client; `kafka_config` is the one place they become keys."""

    client_id: str = "fleetlearn"
    """Names this process in broker logs, metrics and quotas."""
    security_protocol: str = "plaintext"
    """One of plaintext, ssl, sasl_plaintext, sasl_ssl."""
    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 ...; only with a sasl_* protocol."""
    sasl_username: str | None = None
    """Taken from the URL's user part when not given."""
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    """CA bundle (PEM) that signed the brokers' certificates."""
    ssl_certificate_location: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    ssl_key_location: str | None = None
    message_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest record the producer accepts; larger ones fail at `produce`, never silently."""
    linger_ms: int = 5
    """How long the producer waits to fill a batch: a little latency for much throughput."""
    delivery_timeout_ms: int = 300_000
    """How long the producer retries a record before reporting it failed (the bridge then
    writes it again, so a long Kafka outage costs memory in the producer, never a record)."""
    session_timeout_ms: int = 10_000
    """A consumer silent this long leaves its group and its partitions move to the others."""
    timeout_s: float = 30.0
    """Bound on every blocking admin, metadata, commit and close call."""
    extra: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    """librdkafka keys passed verbatim, for tuning that the typed fields do not cover."""

    def __post_init__(self) -> None:
        if self.security_protocol.lower() not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"kafka security_protocol must be one of {SECURITY_PROTOCOLS}, "
                f"got {self.security_protocol!r}"
            )
        if self.message_max_bytes < 1000:
            raise ConfigError(
                f"kafka message_max_bytes must be >= 1000, got {self.message_max_bytes}"
            )
        if self.delivery_timeout_ms < 1000:
            raise ConfigError(
                f"kafka delivery_timeout_ms must be >= 1000, got {self.delivery_timeout_ms}"
            )
        if self.session_timeout_ms < 1000 or self.timeout_s <= 0:
            raise ConfigError("kafka session_timeout_ms must be >= 1000 and timeout_s > 0")


def kafka_config(
    bootstrap: str,
    options: KafkaOptions,
    role: Role,
    *,
    group_id: str | None = None,
    auto_offset_reset: str = "earliest",
) -> dict[str, Any]:
    """The librdkafka settings of one client; every client is configured through here."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": options.client_id,
        **_security_settings(options),
    }
    if role == "producer":
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",  # key -> partition as in the embedded log
                "linger.ms": options.linger_ms,
                "message.max.bytes": options.message_max_bytes,
                "delivery.timeout.ms": options.delivery_timeout_ms,
            }
        )
    elif role == "consumer":
        config.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": auto_offset_reset,
                "session.timeout.ms": options.session_timeout_ms,
                "heartbeat.interval.ms": max(100, options.session_timeout_ms // 10),
                "isolation.level": "read_committed",
            }
        )
    config.update(options.extra)
    return config


def _security_settings(options: KafkaOptions) -> dict[str, Any]:
    """TLS and SASL keys, only those given: librdkafka rejects empty values."""
    optional = {
        "sasl.mechanism": options.sasl_mechanism,
        "sasl.username": options.sasl_username,
        "sasl.password": options.sasl_password,
        "ssl.ca.location": options.ssl_ca_location,
        "ssl.certificate.location": options.ssl_certificate_location,
        "ssl.key.location": options.ssl_key_location,
    }
    given = {key: value for key, value in optional.items() if value is not None}
    return {"security.protocol": options.security_protocol.lower(), **given}


def parse_kafka_url(url: str, overrides: Mapping[str, Any]) -> tuple[str, KafkaOptions]:
    """Bootstrap servers and options of `kafka://[user:pass@]h1:p1[,h2:p2][?option=value]`."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{mask_password(url)}: not a valid URL ({exc})") from exc
    userinfo, at, hosts_text = parts.netloc.rpartition("@")
    hosts = hosts_text.split(",")
    for host in hosts:
        try:
            one = parse_url(f"kafka://{host}", schemes=("kafka",))
        except ConfigError as exc:
            raise ConfigError(f"{mask_password(url)}: broker {host!r}: {exc}") from exc
        if not one.host or one.port is None:
            raise ConfigError(f"{mask_password(url)}: broker {host!r} must be host:port")
    # urllib reads one port only, so the query and credentials are parsed with the first host.
    parsed = parse_url(
        urlunsplit(parts._replace(netloc=userinfo + at + hosts[0])), schemes=("kafka",)
    )
    from_url: dict[str, Any] = {}
    if parsed.username is not None:
        from_url = {"sasl_username": parsed.username, "sasl_password": parsed.password}
    options = options_from_url(KafkaOptions, parsed, {**from_url, **overrides})
    return ",".join(hosts), options
