"""Topic names are built and parsed in one place, and nothing unsafe becomes a topic level."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import topics
from bus.errors import ValidationError
from bus.topics import DeviceChannel


def test_device_topics_follow_the_architecture_table() -> None:
    prefix = topics.default_prefix("farm-1")
    assert prefix == "fleetlearn/farm-1"
    assert topics.update_topic(prefix, "pi-07") == "fleetlearn/farm-1/devices/pi-07/update"
    assert topics.data_topic(prefix, "pi-07") == "fleetlearn/farm-1/devices/pi-07/data"
    assert topics.status_topic(prefix, "pi-07") == "fleetlearn/farm-1/devices/pi-07/status"
    assert topics.cmd_topic(prefix, "pi-07") == "fleetlearn/farm-1/devices/pi-07/cmd"
    assert topics.rounds_topic(prefix) == "fleetlearn/farm-1/rounds/current"
    assert topics.release_topic(prefix, "har-cnn") == "fleetlearn/farm-1/models/har-cnn/release"


def test_filters_and_shared_subscriptions() -> None:
    assert topics.device_filter("p", DeviceChannel.UPDATE) == "p/devices/+/update"
    shared = topics.device_filter("p", DeviceChannel.STATUS, share_group="bridges")
    assert shared == "$share/bridges/p/devices/+/status"
    with pytest.raises(ValidationError, match="share_group"):
        topics.device_filter("p", DeviceChannel.STATUS, share_group="a/b")


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "#", "x" * 129, "a b", "é"])
def test_device_ids_that_would_break_topic_matching_are_rejected(device_id: str) -> None:
    with pytest.raises(ValidationError, match="device_id"):
        topics.update_topic("fleetlearn/f", device_id)


@pytest.mark.parametrize("prefix", ["", "a//b", "a/+/b", "a/#", "$SYS/x", "/a"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        topics.rounds_topic(prefix)


def test_parse_device_topic_rejects_foreign_topics() -> None:
    with pytest.raises(ValidationError, match="not under"):
        topics.parse_device_topic("p", "q/devices/a/update")
    with pytest.raises(ValidationError, match=r"topic\.channel"):
        topics.parse_device_topic("p", "p/devices/a/telemetry")
    with pytest.raises(ValidationError, match="expected"):
        topics.parse_device_topic("p", "p/devices/a/update/extra")
    with pytest.raises(ValidationError, match=r"topic\.device_id"):
        topics.parse_device_topic("p", "p/devices/a b/update")


def test_kafka_topic_for_each_uplink_channel() -> None:
    assert topics.KAFKA_TOPIC_FOR[DeviceChannel.UPDATE] == "fleetlearn.updates"
    assert topics.KAFKA_TOPIC_FOR[DeviceChannel.DATA] == "fleetlearn.data"
    assert topics.KAFKA_TOPIC_FOR[DeviceChannel.STATUS] == "fleetlearn.status"
    assert DeviceChannel.CMD not in topics.KAFKA_TOPIC_FOR


@given(
    device_id=st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=128),
    channel=st.sampled_from(list(DeviceChannel)),
)
def test_build_then_parse_round_trips(device_id: str, channel: DeviceChannel) -> None:
    prefix = "fleetlearn/fleet-a"
    topic = topics.device_topic(prefix, device_id, channel)
    assert topics.parse_device_topic(prefix, topic) == (device_id, channel)


@given(topic=st.text(max_size=80))
def test_parse_raises_only_validation_errors(topic: str) -> None:
    try:
        topics.parse_device_topic("fleetlearn/f", topic)
    except ValidationError:
        return
    assert topic.startswith("fleetlearn/f/devices/")
