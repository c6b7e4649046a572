"""MQTT URLs become typed options; bad ones, bad TLS files, topics and filters are refused
before any broker is contacted, with the URL (password masked) in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import errors
from bus.errors import ConfigError, PublishError
from bus.mqtt import MqttClient, MqttOptions
from bus.mqtt.message import check_topic_filter
from bus.mqtt.options import tls_context


def test_full_url() -> None:
    options = MqttOptions.from_url(
        "mqtts://dev%2F1:s3cret@broker.example:8884?protocol=311&keepalive=10&ca=/etc/ca.pem",
        client_id="pi-01",
    )
    assert (options.host, options.port, options.tls) == ("broker.example", 8884, True)
    assert (options.username, options.password) == ("dev/1", "s3cret")
    assert options.protocol == 311
    assert options.keepalive == 10
    assert options.ca_file == "/etc/ca.pem"
    assert options.url == "mqtts://broker.example:8884"


def test_defaults_are_persistent_qos1_friendly() -> None:
    options = MqttOptions.from_url("mqtt://localhost", client_id="bridge-0")
    assert options.port == 1883
    assert options.protocol == 5
    assert not options.clean_start
    assert options.session_expiry > 0
    assert MqttOptions.from_url("mqtts://h", client_id="x").port == 8883


def test_overrides_replace_fields() -> None:
    options = MqttOptions.from_url("mqtt://h", client_id="x", manual_ack=True, max_inflight=7)
    assert options.manual_ack
    assert options.max_inflight == 7


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h", "scheme"),
        ("mqtt://h?protocol=4", "protocol"),
        ("mqtt://h?keepalive=soon", "keepalive"),
        ("mqtt://h?qos=2", "unknown option"),
        ("mqtt://:1883", "no host"),
    ],
)
def test_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        MqttOptions.from_url(url, client_id="x")


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        MqttOptions.from_url("mqtt://u:hunter2@h?bogus=1", client_id="x")
    assert "hunter2" not in str(caught.value)


def test_client_id_is_required() -> None:
    with pytest.raises(ConfigError, match="client id"):
        MqttOptions.from_url("mqtt://h")


def test_missing_tls_files_are_config_errors(tmp_path: Path) -> None:
    options = MqttOptions.from_url(f"mqtts://h?ca={tmp_path / 'absent.pem'}", client_id="x")
    with pytest.raises(ConfigError, match=r"absent\.pem"):
        tls_context(options)
    with pytest.raises(ConfigError, match="TLS files"):
        MqttClient(options)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "+x/y", "a/\x00"], ids=repr)
def test_bad_topic_filters_are_refused_before_the_broker_sees_them(topic_filter: str) -> None:
    with pytest.raises(ConfigError, match="topic filter"):
        check_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["a/b", "a/+/c", "#", "a/#", "$share/g/a/+/c"])
def test_good_topic_filters_pass(topic_filter: str) -> None:
    check_topic_filter(topic_filter)


def test_publish_refusals_need_no_broker() -> None:
    client = MqttClient(MqttOptions.from_url("mqtt://127.0.0.1:1?protocol=311", client_id="x"))
    with pytest.raises(PublishError, match="refused"):
        client.publish("a/+/b", b"wildcards are for filters")
    with pytest.raises(ConfigError, match="MQTT 5"):
        client.publish("a/b", b"x", user_properties={"k": "v"})
    with pytest.raises(ConfigError, match="topic filter"):
        client.subscribe("a/#/b", lambda message: None)
    client.close()
    with pytest.raises(PublishError, match="closed"):
        client.publish("a/b", b"x")


def test_queue_bound_and_close_fail_unacknowledged_publishes() -> None:
    # Never connected: publishes queue in memory, up to max_queued, and wait for a broker.
    options = MqttOptions.from_url("mqtt://127.0.0.1:1", client_id="x", max_queued=2)
    client = MqttClient(options)
    handles = [client.publish("a/b", b"1"), client.publish("a/b", b"2")]
    with pytest.raises(PublishError, match="queue is full"):
        client.publish("a/b", b"3")
    with pytest.raises(errors.TimeoutError, match="no acknowledgement"):
        handles[0].wait(0.2)
    client.close()
    for handle in handles:
        with pytest.raises(PublishError, match="closed before the broker acknowledged"):
            handle.wait(1)
        assert not handle.acknowledged
