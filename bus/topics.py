"""Every MQTT topic and Kafka topic name fleetlearn uses, built and parsed in this one module.

Nobody else formats topic strings: a device id with a `/` or a `+` in it would otherwise open a
hole in the broker ACL (`{p}/devices/{id}/…` must match exactly one device), so ids and prefixes
are checked here, once, before they become part of a topic.
"""

from __future__ import annotations

import re
from enum import StrEnum

from bus.errors import ValidationError

DEFAULT_PREFIX_TEMPLATE = "fleetlearn/{fleet}"

# Kafka topics on the cloud side (key = device id where a device is the source).
KAFKA_UPDATES = "fleetlearn.updates"
KAFKA_DATA = "fleetlearn.data"
KAFKA_STATUS = "fleetlearn.status"
KAFKA_ROUNDS = "fleetlearn.rounds"
KAFKA_RELEASES = "fleetlearn.releases"
KAFKA_DLQ = "fleetlearn.dlq"
# Models trained outside the rounds (DDP on the data stream), offered to the trainer as a base.
KAFKA_SEEDS = "fleetlearn.seeds"

_DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_FLEET = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_GROUP = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LEVEL = re.compile(r"[^/+#\x00]+")


class DeviceChannel(StrEnum):
    """The per-device MQTT topics, named by their last level."""

    UPDATE = "update"
    DATA = "data"
    STATUS = "status"
    CMD = "cmd"


# Which device channels travel to which Kafka topic through the bridge.
KAFKA_TOPIC_FOR: dict[DeviceChannel, str] = {
    DeviceChannel.UPDATE: KAFKA_UPDATES,
    DeviceChannel.DATA: KAFKA_DATA,
    DeviceChannel.STATUS: KAFKA_STATUS,
}


def check_device_id(device_id: str, *, where: str = "device_id") -> str:
    """Reject ids that would break topic matching: `/`, `+`, `#`, spaces, or over 128 chars."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ValidationError(
            f"must be 1-128 characters of A-Z a-z 0-9 . _ : - (got {device_id!r})", where=where
        )
    return device_id


def check_fleet(fleet: str, *, where: str = "fleet") -> str:
    if not isinstance(fleet, str) or not _FLEET.fullmatch(fleet):
        raise ValidationError(
            f"must be 1-64 characters of A-Z a-z 0-9 . _ - (got {fleet!r})", where=where
        )
    return fleet


def check_model_name(model: str, *, where: str = "model") -> str:
    if not isinstance(model, str) or not _NAME.fullmatch(model):
        raise ValidationError(
            f"must be 1-128 characters of A-Z a-z 0-9 . _ - (got {model!r})", where=where
        )
    return model


def check_prefix(prefix: str) -> str:
    """A prefix is one or more non-empty levels with no wildcards and no leading `$`."""
    if not isinstance(prefix, str) or not prefix:
        raise ValidationError(f"must be a non-empty topic prefix (got {prefix!r})", where="prefix")
    if prefix.startswith("$"):
        raise ValidationError(f"must not start with '$' (got {prefix!r})", where="prefix")
    for level in prefix.split("/"):
        if not _LEVEL.fullmatch(level):
            raise ValidationError(
                f"every level must be non-empty and free of '+', '#' (got {prefix!r})",
                where="prefix",
            )
    return prefix


def default_prefix(fleet: str) -> str:
    return DEFAULT_PREFIX_TEMPLATE.format(fleet=check_fleet(fleet))


def device_topic(prefix: str, device_id: str, channel: DeviceChannel) -> str:
    return f"{check_prefix(prefix)}/devices/{check_device_id(device_id)}/{channel.value}"


def update_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, DeviceChannel.UPDATE)


def data_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, DeviceChannel.DATA)


def status_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, DeviceChannel.STATUS)


def cmd_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, DeviceChannel.CMD)


def rounds_topic(prefix: str) -> str:
    """Retained: a device that connects late still learns the current round."""
    return f"{check_prefix(prefix)}/rounds/current"


def release_topic(prefix: str, model: str) -> str:
    """Retained: a device that connects late still learns the latest release."""
    return f"{check_prefix(prefix)}/models/{check_model_name(model)}/release"


def device_filter(prefix: str, channel: DeviceChannel, *, share_group: str | None = None) -> str:
    """The subscription filter for one channel of every device, e.g. `{p}/devices/+/update`.

    With `share_group`, an MQTT 5 shared subscription (`$share/{group}/…`) so several bridges
    split the load.
    """
    topic_filter = f"{check_prefix(prefix)}/devices/+/{channel.value}"
    if share_group is None:
        return topic_filter
    if not _GROUP.fullmatch(share_group):
        raise ValidationError(
            f"must be 1-64 characters of A-Z a-z 0-9 . _ - (got {share_group!r})",
            where="share_group",
        )
    return f"$share/{share_group}/{topic_filter}"


def parse_device_topic(prefix: str, topic: str) -> tuple[str, DeviceChannel]:
    """Split `{prefix}/devices/{id}/{channel}` into the device id and the channel."""
    head = f"{check_prefix(prefix)}/devices/"
    if not topic.startswith(head):
        raise ValidationError(f"not under {head!r} (got {topic!r})", where="topic")
    rest = topic[len(head) :].split("/")
    if len(rest) != 2:
        raise ValidationError(
            f"expected {head}<device_id>/<channel> (got {topic!r})", where="topic"
        )
    device_id, channel = rest
    check_device_id(device_id, where="topic.device_id")
    try:
        return device_id, DeviceChannel(channel)
    except ValueError:
        known = ", ".join(c.value for c in DeviceChannel)
        raise ValidationError(
            f"unknown channel {channel!r}; expected one of {known}", where="topic.channel"
        ) from None
