"""Typed MQTT connection options, read from an `mqtt://` or `mqtts://` URL.

mqtt[s]://[user:password@]host[:port][?protocol=5|311&keepalive=30&session_expiry=86400
                                      &ca=/ca.pem&cert=/c.pem&key=/k.pem&insecure=1]
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from typing import Any, Literal

from bus.errors import ConfigError
from bus.urls import parse_url

_KNOWN = {"protocol", "keepalive", "session_expiry", "ca", "cert", "key", "insecure", "client_id"}


@dataclass(frozen=True)
class MqttOptions:
    """Everything the MQTT client needs; read from a URL at the boundary, then passed around."""

    host: str
    port: int
    # Stable across restarts: the broker keeps the persistent session under this id.
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    # 5 by default; 311 for brokers that speak only 3.1.1 (the embedded amqtt).
    protocol: Literal[5, 311] = 5
    keepalive: int = 30
    # Persistent sessions: QoS 1 messages queued while a client is away wait for it this long.
    session_expiry: int = 86400
    # True throws the broker-side session (and its queued messages) away on connect.
    clean_start: bool = False
    # PEM files for `mqtts://`: the CA that signed the broker, and an optional client identity.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Skip certificate and hostname checks: test rigs only.
    insecure: bool = False
    # Caller acknowledges each message with `MqttMessage.ack()`; un-acked ones are redelivered.
    manual_ack: bool = False
    # Outgoing QoS 1 messages awaiting PUBACK; the rest wait in paho's queue.
    max_inflight: int = 100
    max_queued: int = 0  # 0 = unbounded: publishes made while disconnected wait in memory
    # Reconnect backoff doubles from min to max; paho's own thread counts whole seconds.
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


def tls_context(options: MqttOptions) -> ssl.SSLContext:
    """Verify the broker against `ca_file` (or the system CAs); present a client cert if given."""
    try:
        context = ssl.create_default_context(cafile=options.ca_file)
        if options.cert_file:
            context.load_cert_chain(options.cert_file, options.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = [f for f in (options.ca_file, options.cert_file, options.key_file) if f]
        raise ConfigError(f"{options.url}: cannot load TLS files {files}: {exc}") from exc
    if options.insecure:  # test rigs only: no hostname or chain check at all
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
