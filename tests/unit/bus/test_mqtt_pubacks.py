"""PUBACK reason codes: "No matching subscribers" (16) fails a publish that asks for a
subscriber, whether the PUBACK comes before or after the handle is registered.

The PUBACKs are fed to the client's callback here, as paho would call it: with the reason
code, and before it marks the message published (see paho's `_do_on_publish`). Against a
real Mosquitto, tests/integration/test_mqtt_contract.py covers the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bus.errors import NoSubscriberError, PublishError
from bus.mqtt import MqttClient, MqttOptions, PublishHandle


class Info:
    """paho's MQTTMessageInfo, as far as the handle reads it."""

    def __init__(self, mid: int, *, published: bool = False) -> None:
        self.mid = mid
        self.rc = 0
        self.published = published

    def is_published(self) -> bool:
        return self.published


def client() -> MqttClient:
    return MqttClient(MqttOptions.from_url("mqtt://127.0.0.1:1", client_id="c"), threaded=True)


def puback(name: str) -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK, name)


NO_SUBSCRIBERS = puback("No matching subscribers")
SUCCESS = puback("Success")


def sent(c: MqttClient, mid: int, *, early: ReasonCode | None = None, **kwargs: Any) -> Any:
    """`publish` with paho's send replaced: `early` is a PUBACK that arrives inside it, before
    the handle is registered (paho marks the message published right after the callback)."""
    info = Info(mid)

    def paho_publish(*args: Any, **kw: Any) -> Info:
        if early is not None:
            c._on_publish(c._paho, None, mid, early, None)
            info.published = True
        return info

    c._paho.publish = paho_publish  # type: ignore[method-assign, assignment]
    return c.publish("f/devices/d/update", b"x", qos=1, **kwargs), info


def test_reason_16_fails_a_publish_that_requires_a_subscriber() -> None:
    c = client()
    handle, _ = sent(c, 1, require_subscriber=True)
    assert not handle.acknowledged
    c._on_publish(c._paho, None, 1, NO_SUBSCRIBERS, None)
    assert handle.failed
    assert not handle.acknowledged
    assert isinstance(handle.error, NoSubscriberError)
    with pytest.raises(NoSubscriberError, match="no subscriber took the message"):
        handle.wait(1)
    with pytest.raises(PublishError):  # one family for callers that only catch PublishError
        handle.wait(1)


def test_reason_16_is_still_an_ack_by_default_and_success_is_an_ack_either_way() -> None:
    c = client()
    plain, _ = sent(c, 1)
    c._on_publish(c._paho, None, 1, NO_SUBSCRIBERS, None)
    assert plain.acknowledged
    assert plain.error is None
    strict, _ = sent(c, 2, require_subscriber=True)
    c._on_publish(c._paho, None, 2, SUCCESS, None)
    strict.wait(1)
    assert strict.acknowledged


@pytest.mark.parametrize("require", [True, False])
def test_a_puback_16_that_comes_before_the_registration_is_not_lost(require: bool) -> None:
    c = client()
    handle, info = sent(c, 7, early=NO_SUBSCRIBERS, require_subscriber=require)
    assert info.published  # paho's own record says "published": it must not decide alone
    if require:
        assert handle.failed
        assert isinstance(handle.error, NoSubscriberError)
    else:
        assert handle.acknowledged
    assert c._early_acks == {}
    assert c._pending == {}


def test_a_refusal_that_comes_before_the_registration_fails_the_handle() -> None:
    c = client()
    handle, _ = sent(c, 9, early=puback("Not authorized"))
    assert handle.failed
    assert not isinstance(handle.error, NoSubscriberError)
    with pytest.raises(PublishError, match="refused"):
        handle.wait(1)


def test_an_early_success_and_qos0_acks_leave_nothing_behind() -> None:
    c = client()
    handle, _ = sent(c, 3, early=SUCCESS, require_subscriber=True)
    assert handle.acknowledged
    for mid in range(100, 200):  # paho "acks" every QoS 0 message with Success, never registered
        c._on_publish(c._paho, None, mid, SUCCESS, None)
    assert c._early_acks == {}


def test_a_closed_client_fails_what_waits_and_forgets_early_codes() -> None:
    c = client()
    handle, _ = sent(c, 4, require_subscriber=True)
    c._on_publish(c._paho, None, 5, NO_SUBSCRIBERS, None)  # a stray: never registered
    c.close()
    assert handle.failed
    assert not isinstance(handle.error, NoSubscriberError)
    assert c._early_acks == {}


def test_mqtt_311_acks_carry_no_reason_so_nothing_can_be_detected() -> None:
    c = MqttClient(
        MqttOptions.from_url("mqtt://127.0.0.1:1?protocol=311", client_id="c"), threaded=True
    )
    handle, _ = sent(c, 1, require_subscriber=True)
    c._on_publish(c._paho, None, 1, ReasonCode(PacketTypes.PUBACK), None)  # what paho passes
    assert handle.acknowledged


def test_the_handle_keeps_the_option() -> None:
    c = client()
    handle, _ = sent(c, 1, require_subscriber=True)
    assert isinstance(handle, PublishHandle)
    assert handle.require_subscriber
