"""Typed MQTT connection options, read from an `mqtt://` or `mqtts://` URL.

mqtt[s]://[user:password@]host[:port][?protocol=5|311&keepalive=30&session_expiry=86400
                                      &ca=/ca.pem&cert=/c.pem&key=/k.pem&insecure=1]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from bus.errors import ConfigError
from bus.urls import parse_url

_KNOWN = {"protocol", "keepalive", "session_expiry", "ca", "cert", "key", "insecure", "client_id"}


@dataclass(frozen=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    protocol: Literal[5, 311] = 5
    keepalive: int = 30
    # Persistent sessions: QoS 1 messages queued while a client is away wait for it this long.
    session_expiry: int = 86400
    clean_start: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    # Caller acknowledges each message with `MqttMessage.ack()`; un-acked ones are redelivered.
    manual_ack: bool = False
    max_inflight: int = 100
    max_queued: int = 0  # 0 = unbounded: publishes made while disconnected wait in memory
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, *, client_id: str | None = None, **overrides: Any) -> MqttOptions:
        parsed = parse_url(url, schemes=("mqtt", "mqtts"))
        unknown = sorted(set(parsed.query) - _KNOWN)
        if unknown:
            raise ConfigError(
                f"{parsed.safe}: unknown option(s) {unknown}; known: {sorted(_KNOWN)}"
            )
        if not parsed.host:
            raise ConfigError(f"{parsed.safe}: no host given")
        tls = parsed.scheme == "mqtts"
        protocol = parsed.int_option("protocol", 5)
        if protocol not in (5, 311):
            raise ConfigError(f"{parsed.safe}: protocol must be 5 or 311, got {protocol}")
        chosen_id = client_id or parsed.option("client_id")
        if not chosen_id or len(chosen_id) > 128:
            raise ConfigError(f"{parsed.safe}: a stable client id of 1-128 characters is required")
        options = cls(
            host=parsed.host,
            port=parsed.port or (8883 if tls else 1883),
            client_id=chosen_id,
            tls=tls,
            username=parsed.username,
            password=parsed.password,
            protocol=5 if protocol == 5 else 311,
            keepalive=parsed.int_option("keepalive", 30),
            session_expiry=parsed.int_option("session_expiry", 86400),
            ca_file=parsed.option("ca"),
            cert_file=parsed.option("cert"),
            key_file=parsed.option("key"),
            insecure=parsed.bool_option("insecure", False),
        )
        return replace(options, **overrides)
