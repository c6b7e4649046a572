"""The cheaper PUBLISH decoder returns what paho's own returns, for every shape of packet."""

from __future__ import annotations

import random
from typing import Any

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bus.mqtt import fast_decode

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
PAHO = fast_decode._original


def publish_body(topic: bytes, qos: int, payload: bytes, properties: bytes | None) -> bytearray:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += (4242).to_bytes(2, "big")
    if properties is not None:
        body += properties
    return bytearray(body + payload)


def user_property() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("k", "v")]
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def outcome(decode: Any, header: int, packet: bytearray, protocol: MQTTProtocolVersion) -> Any:
    try:
        result = decode(header, bytearray(packet), protocol)
    except Exception as exc:  # the same failure must come out of both
        return type(exc).__name__
    properties = None if result.properties is None else str(result.properties)
    return (*result._replace(properties=properties),)


CASES = [
    (V5, 0x32, b"f/devices/d1/update", 1, b"x" * 1024, b"\x00"),
    (V5, 0x30, b"f/devices/d1/update", 0, b"", b"\x00"),
    (V5, 0x3B, b"t", 1, b"\x00\x01", b"\x00"),  # dup, retain
    (V5, 0x32, b"f/x", 1, b"payload", user_property()),  # properties: paho's path
    (V5, 0x32, b"", 1, b"payload", b"\x00"),  # empty topic (an alias would carry it)
    (V311, 0x32, b"f/devices/d1/update", 1, b"y" * 100_000, None),
    (V311, 0x30, b"a/b", 0, b"", None),
    (V311, 0x32, b"", 1, b"p", None),  # an empty topic is malformed on 3.1.1
]


@pytest.mark.parametrize(("protocol", "header", "topic", "qos", "payload", "props"), CASES)
def test_same_result_as_paho(
    protocol: MQTTProtocolVersion,
    header: int,
    topic: bytes,
    qos: int,
    payload: bytes,
    props: bytes | None,
) -> None:
    packet = publish_body(topic, qos, payload, props)
    assert outcome(fast_decode.decode_publish, header, packet, protocol) == outcome(
        PAHO, header, packet, protocol
    )


def test_truncated_and_random_packets_fail_or_pass_like_paho() -> None:
    rng = random.Random(7)
    base = publish_body(b"f/devices/d1/update", 1, b"z" * 64, b"\x00")
    for _ in range(3000):
        cut = bytearray(base[: rng.randrange(0, len(base) + 1)])
        for _ in range(rng.randrange(0, 3)):
            if cut:
                cut[rng.randrange(len(cut))] = rng.randrange(256)
        header = rng.choice([0x30, 0x32, 0x34, 0x3A])
        for protocol in (V5, V311):
            ours = outcome(fast_decode.decode_publish, header, cut, protocol)
            assert ours == outcome(PAHO, header, cut, protocol), (bytes(cut), header, protocol)


def test_installed_for_the_paho_in_use() -> None:
    import bus.mqtt.client  # noqa: F401  (installs it)

    assert fast_decode.install()
    assert _packet.decode_publish is fast_decode.decode_publish
