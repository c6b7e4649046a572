"""SUBACK bookkeeping: a refused subscription is an error that names its filter.

Mosquitto grants every subscription and applies its ACL on delivery, so a refusal cannot be
provoked from the real broker; the answers are fed to the client's callback here instead.
"""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bus.errors import ConnectError
from bus.mqtt import MqttClient, MqttOptions


def client() -> MqttClient:
    return MqttClient(MqttOptions.from_url("mqtt://127.0.0.1:1", client_id="c"), threaded=True)


def suback(name: str) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, name)


def test_a_refused_subscription_names_the_filter() -> None:
    c = client()
    c._subscribing = {7: "fleet/devices/+/update", 8: "fleet/rounds"}
    c._on_subscribe(c._paho, None, 7, [suback("Not authorized")], None)
    c._on_subscribe(c._paho, None, 8, [suback("Granted QoS 1")], None)
    with pytest.raises(
        ConnectError, match=r"refused the subscription to 'fleet/devices/\+/update'"
    ):
        c._await_subacks({7: "fleet/devices/+/update", 8: "fleet/rounds"}, time.monotonic() + 1)
    assert c.subscribed


def test_granted_subscriptions_pass_and_a_missing_answer_times_out() -> None:
    c = client()
    c._subscribing = {3: "a/b", 4: "c/d"}
    c._on_subscribe(c._paho, None, 3, [suback("Granted QoS 1")], None)
    assert not c.subscribed
    with pytest.raises(ConnectError, match=r"did not answer SUBSCRIBE 'c/d'"):
        c._await_subacks({3: "a/b", 4: "c/d"}, time.monotonic() + 0.1)
    c._on_subscribe(c._paho, None, 4, [suback("Granted QoS 0")], None)
    c._await_subacks({4: "c/d"}, time.monotonic() + 1)
    assert c.subscribed


def test_an_answer_that_comes_before_the_packet_id_is_recorded_counts() -> None:
    c = client()
    c._on_subscribe(c._paho, None, 5, [suback("Granted QoS 1")], None)  # the SUBACK raced ahead
    c._await_subacks({5: "a/b"}, time.monotonic() + 1)
