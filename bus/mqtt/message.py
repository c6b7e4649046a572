"""What the MQTT adapter hands its callers: messages, the Last Will, checked topic filters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bus.errors import ConfigError


@dataclass(frozen=True)
class Will:
    """Published by the broker if this client vanishes without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


UserProperties = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MqttMessage:
    """One delivery, detached from paho so handlers never see its types.

    `duplicate` is the broker's DUP flag: a redelivery the handler may have seen before (dedupe
    by message id regardless). `user_properties` are MQTT 5 user properties (always empty on
    3.1.1), which the bridge carries over as Kafka headers.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    duplicate: bool = False
    user_properties: UserProperties = ()
    _ack: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        """Tell the broker this message is handled (manual-ack clients; a no-op otherwise).

        Ack in arrival order: that is the caller's duty. MQTT acknowledges a session's QoS 1
        messages in order, and a broker may treat an out-of-order PUBACK as covering the
        messages before it, so acking a later message first can lose an earlier one on a crash.
        """
        if self._ack is not None:
            self._ack()


def check_topic_filter(topic_filter: str) -> None:
    """Checked here, not by the broker, so a typo fails at the call and not at a reconnect."""
    levels = topic_filter.split("/")
    bad = (
        not topic_filter
        or "\x00" in topic_filter
        or any(("#" in level or "+" in level) and len(level) > 1 for level in levels)
        or "#" in levels[:-1]
    )
    if bad:
        raise ConfigError(
            f"invalid MQTT topic filter {topic_filter!r}: '+' and '#' must fill a whole level, "
            "and '#' must be the last one"
        )
