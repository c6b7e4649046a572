"""MQTT URLs become typed options; bad ones are refused with the URL (password masked)."""

from __future__ import annotations

import pytest

from bus.errors import ConfigError
from bus.mqtt import MqttOptions


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
