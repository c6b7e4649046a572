"""Whole messages: frame layout, every kind round-trips, validation names the field, zero copy."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import FrameError, ValidationError
from bus.protocol import (
    Envelope,
    MessageKind,
    ReleaseManifest,
    Status,
    TensorSpec,
    decode_message,
    encode_message,
    encode_update,
    peek_header,
    read_tensors,
    signing_bytes,
    write_tensors,
)
from bus.protocol.frame import FLAG_ZSTD, FLAG_ZSTD_HEADER, pack_frame
from tests.unit.bus.protocol_samples import samples, update_header


def test_frame_layout_bytes() -> None:
    data = encode_message(Status(fleet="f", device_id="d", online=False))
    magic, version, flags, reserved, header_length = struct.unpack_from("<4sBBHI", data)
    assert (magic, version, flags, reserved) == (b"FLRN", 1, 0, 0)
    header = json.loads(data[12 : 12 + header_length])
    assert len(data) == 12 + header_length  # no payload
    assert header["schema"] == 1
    assert header["kind"] == "status"
    assert len(header["id"]) == 32


@pytest.mark.parametrize("compress", [False, True])
def test_every_kind_round_trips(compress: bool) -> None:
    for kind, data in samples(compress).items():
        message = decode_message(data)
        assert message.kind == MessageKind(kind)
        assert peek_header(data) == message.envelope


def test_update_round_trip_values_and_compression_flag() -> None:
    delta = {"w": np.array([[0.5, -1.0]], dtype=np.float32)}
    data, _ = encode_update(update_header("fp32"), delta, compress=True)
    assert data[5] == FLAG_ZSTD | FLAG_ZSTD_HEADER
    message = decode_message(data)
    np.testing.assert_array_equal(message.tensors["w"], delta["w"])
    envelope = message.envelope
    assert envelope.payload is not None
    assert envelope.payload.compression == "zstd"
    assert [t.name for t in envelope.tensors] == ["w"]  # type: ignore[union-attr]


def test_uncompressed_decoding_is_zero_copy() -> None:
    data = bytearray(encode_update(update_header("fp32"), {"w": np.ones(64, dtype=np.float32)})[0])
    tensor = decode_message(data).tensors["w"]
    assert np.shares_memory(tensor, np.frombuffer(data, dtype=np.uint8))


def test_safetensors_compatibility_both_ways() -> None:
    ours = write_tensors(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    )
    loaded = safetensors.numpy.load(ours)
    np.testing.assert_array_equal(loaded["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    theirs = safetensors.numpy.save(
        {"x": np.eye(3, dtype=np.float16), "y": np.zeros((0, 2), dtype=np.uint8)}
    )
    read = read_tensors(memoryview(theirs))
    np.testing.assert_array_equal(read["x"], np.eye(3, dtype=np.float16))
    assert read["y"].shape == (0, 2)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"num_examples": 0}, "header.num_examples"),
        ({"device_id": "a/b"}, "header.device_id"),
        ({"codec": {"name": "topk"}}, "header.codec"),
        ({"schema": 2}, "header.schema"),
        ({"kind": "telemetry"}, "header.kind"),
        ({"surprise": 1}, "header.surprise"),
        ({"created_at": "yesterday"}, "header.created_at"),
        ({"base_version": True}, "header.base_version"),
    ],
)
def test_validation_errors_name_the_field(change: dict[str, object], where: str) -> None:
    data = samples(False)["update"]
    length = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12 : 12 + length])
    header.update(change)
    raw = json.dumps(header).encode()
    broken = pack_frame(raw, data[12 + length :], compressed=False)
    with pytest.raises(ValidationError) as caught:
        decode_message(broken)
    assert caught.value.where == where
    assert str(caught.value).startswith(where)


def test_nested_field_path_in_message() -> None:
    data = samples(False)["round"]
    length = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12 : 12 + length])
    header["training"]["batch_size"] = 0
    with pytest.raises(ValidationError, match=r"header\.training\.batch_size: .*(got 0)"):
        decode_message(pack_frame(json.dumps(header).encode(), b"", compressed=False))


def test_tampered_payload_fails_the_hash() -> None:
    data = bytearray(samples(False)["update"])
    data[-1] ^= 0xFF
    with pytest.raises(ValidationError, match="xxh3_128"):
        decode_message(bytes(data))


def test_frame_errors() -> None:
    good = samples(False)["status"]
    with pytest.raises(FrameError, match="magic"):
        decode_message(b"XXXX" + good[4:])
    with pytest.raises(FrameError, match="version"):
        decode_message(good[:4] + b"\x02" + good[5:])
    with pytest.raises(FrameError, match="too short"):
        decode_message(good[:5])
    with pytest.raises(FrameError, match="flag"):
        decode_message(good[:5] + b"\x80" + good[6:])


def test_zstd_bomb_is_refused_without_inflating() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (8 * 1024 * 1024))
    tensors = (TensorSpec(name="w", dtype="F32", shape=(25,)),)
    envelope = update_header("fp32").model_copy(update={"tensors": tensors})
    header = envelope.model_dump(mode="json", by_alias=True)
    header["payload"] = {
        "length": len(bomb),
        "raw_length": 100,
        "xxh3_128": xxhash.xxh3_128_hexdigest(bomb),
        "compression": "zstd",
    }
    with pytest.raises(FrameError, match="decompresses to more"):
        decode_message(pack_frame(json.dumps(header).encode(), bomb, compressed=True))


def test_signing_bytes_survive_reframing_but_not_edits() -> None:
    release = decode_message(samples(False)["release"]).envelope
    assert isinstance(release, ReleaseManifest)
    again = decode_message(samples(True)["release"]).envelope
    assert isinstance(again, ReleaseManifest)
    assert release.id != again.id
    assert signing_bytes(release) == signing_bytes(again)
    edited = release.model_copy(update={"version": 5})
    assert signing_bytes(edited) != signing_bytes(release)
    assert b" " not in signing_bytes(release)


def test_ids_are_unique() -> None:
    ids = {Status(fleet="f", device_id="d", online=True).id for _ in range(1000)}
    assert len(ids) == 1000


@settings(max_examples=100, deadline=None)
@given(
    device_id=st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=128),
    cpu=st.none() | st.floats(0, 100),
    uptime=st.floats(0, 1e9),
    online=st.booleans(),
)
def test_status_round_trips_any_valid_values(
    device_id: str, cpu: float | None, uptime: float, online: bool
) -> None:
    status = Status(fleet="f", device_id=device_id, online=online, cpu_percent=cpu, uptime_s=uptime)
    decoded: Envelope = decode_message(encode_message(status)).envelope
    assert decoded == status
