"""Typed settings of the Kafka log and the one function that turns them into librdkafka keys.

Kept apart from `bus.log.kafka` so options and URLs can be checked without confluent-kafka
installed, and so the string-keyed config is built in exactly one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from bus.errors import ConfigError, LogError
from bus.log.base import DEFAULT_MAX_MESSAGE_BYTES, options_from_url
from bus.urls import mask_password, parse_url

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
Role = Literal["admin", "producer", "consumer"]

AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
"""us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4 ..."""
IAM_OWNED_KEYS = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "sasl.oauthbearer.method",
        "oauth_cb",
    }
)
"""librdkafka keys that `aws_iam` sets itself: `extra` may not override them."""
OAUTHBEARER_SOURCES = frozenset({"sasl.oauthbearer.method", "enable.sasl.oauthbearer.unsecure.jwt"})
"""Keys in `extra` that give OAUTHBEARER a token without `aws_iam` (OIDC, or test tokens)."""
SIGNER_PACKAGE = "aws-msk-iam-sasl-signer-python"


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
    aws_iam: bool = False
    """Authenticate to Amazon MSK with IAM: SASL/OAUTHBEARER over TLS, each token a request
    presigned for `kafka-cluster:Connect` with this process's AWS credentials (instance role,
    `AWS_*` variables, profile) by aws-msk-iam-sasl-signer-python (the `cloud` extra). Needs
    security_protocol=sasl_ssl and aws_region; takes no username or password."""
    aws_region: str | None = None
    """The MSK cluster's region, which the tokens are signed for; only with aws_iam."""
    replication_factor: int = -1
    """Replicas of each topic `create_topics` creates: -1 (the default) leaves it to the
    brokers' `default.replication.factor` (KIP-464, Kafka >= 2.4). A topic that already
    exists keeps its own."""
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
        if self.replication_factor != -1 and self.replication_factor < 1:
            raise ConfigError(
                "kafka replication_factor must be -1 (the brokers' default.replication.factor) "
                f"or at least 1, got {self.replication_factor}"
            )
        problems = self._aws_iam_problems() if self.aws_iam else self._oauthbearer_problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def _aws_iam_problems(self) -> list[str]:
        problems = []
        if self.security_protocol.lower() != "sasl_ssl":
            problems.append(
                "kafka aws_iam needs security_protocol=sasl_ssl (MSK's IAM listener, port 9098, "
                f"is TLS), got {self.security_protocol!r}"
            )
        if not self.aws_region:
            problems.append(
                "kafka aws_iam needs aws_region, the MSK cluster's region (aws_region=eu-west-1)"
            )
        elif not AWS_REGION.fullmatch(self.aws_region):
            problems.append(
                f"kafka aws_region must be a region name like eu-west-1, got {self.aws_region!r}"
            )
        if self.sasl_mechanism is not None and self.sasl_mechanism.upper() != "OAUTHBEARER":
            problems.append(
                "kafka aws_iam authenticates with SASL OAUTHBEARER, not "
                f"sasl_mechanism={self.sasl_mechanism}: leave sasl_mechanism out"
            )
        if self.sasl_username is not None or self.sasl_password is not None:
            problems.append(
                "kafka aws_iam takes no username or password (the token is signed with the AWS "
                "credentials): remove them from the URL's user part and from the options"
            )
        clashing = sorted(IAM_OWNED_KEYS & set(self.extra))
        if clashing:
            problems.append(f"kafka aws_iam sets {clashing} itself: remove them from extra")
        return problems

    def _oauthbearer_problems(self) -> list[str]:
        problems = []
        if self.aws_region is not None:
            problems.append(
                "kafka aws_region is used only with aws_iam=true (MSK IAM authentication): "
                "add aws_iam=true or drop aws_region"
            )
        mechanism = (self.sasl_mechanism or "").upper()
        if mechanism == "OAUTHBEARER" and not OAUTHBEARER_SOURCES & set(self.extra):
            problems.append(
                "kafka sasl_mechanism=OAUTHBEARER has no token source: add aws_iam=true and "
                "aws_region for Amazon MSK, or sasl.oauthbearer.method=oidc and its settings "
                "in extra"
            )
        return problems


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
    optional: dict[str, Any] = {
        "ssl.ca.location": options.ssl_ca_location,
        "ssl.certificate.location": options.ssl_certificate_location,
        "ssl.key.location": options.ssl_key_location,
    }
    if options.aws_iam:
        # confluent-kafka serves `oauth_cb` from librdkafka's background thread (>= 2.13), at
        # start and again at 80 % of each token's lifetime; `sasl.oauthbearer.config` is not
        # needed (it would only be passed to the callback, which ignores it).
        optional |= {
            "sasl.mechanism": "OAUTHBEARER",
            "oauth_cb": MskIamToken(options.aws_region or ""),
        }
    else:
        optional |= {
            "sasl.mechanism": options.sasl_mechanism,
            "sasl.username": options.sasl_username,
            "sasl.password": options.sasl_password,
        }
    given = {key: value for key, value in optional.items() if value is not None}
    return {"security.protocol": options.security_protocol.lower(), **given}


class MskIamToken:
    """confluent-kafka's `oauth_cb` for Amazon MSK's IAM listener, for one region.

    Each call returns `(token, expiry)`: the token is a request for `kafka-cluster:Connect`,
    presigned (SigV4, locally: no network) with the default AWS credentials and
    base64url-encoded; the expiry is in seconds since the epoch, as confluent-kafka wants it
    (the signer gives milliseconds). The signer is imported here, never at module import, so
    this module loads without it and a device never imports it.
    """

    def __init__(self, region: str) -> None:
        try:
            from aws_msk_iam_sasl_signer import (  # type: ignore[import-untyped]
                MSKAuthTokenProvider,
            )
        except ImportError as exc:
            raise ConfigError(
                f"kafka aws_iam needs the {SIGNER_PACKAGE} package, which the cloud extra "
                f"installs: pip install 'fleetlearn[cloud]' ({exc})"
            ) from exc
        self.region = region
        # Why the last token could not be made: librdkafka reports only that none came.
        self.last_error: str | None = None
        self._generate: Callable[[str], tuple[str, int]] = MSKAuthTokenProvider.generate_auth_token

    def __call__(self, oauthbearer_config: str | None = None) -> tuple[str, float]:
        try:
            token, expiry_ms = self._generate(self.region)
        except Exception as exc:  # any failure: librdkafka keeps only "token not set"
            self.last_error = f"MSK IAM token for {self.region}: {_signer_failure(exc)}"
            log.error("kafka authentication token failed", extra={"reason": self.last_error})
            raise LogError(self.last_error) from exc
        self.last_error = None
        return token, expiry_ms / 1000


def _signer_failure(exc: Exception) -> str:
    import botocore.session

    if botocore.session.Session().get_credentials() is None:
        return (
            "no AWS credentials found (instance profile, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)"
        )
    return f"{type(exc).__name__}: {exc}"


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
