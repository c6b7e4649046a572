"""The binary frame: exact layout bytes, and every fixed field checked before anything is parsed."""

from __future__ import annotations

import pytest
import zstandard

from bus.errors import FrameError
from bus.protocol.frame import FLAG_ZSTD, FLAG_ZSTD_HEADER, PREFIX_SIZE, pack_frame, unpack_frame
from bus.protocol.limits import Limits

HEADER = b'{"a":1}'
# a header that zstd shrinks, as real ones with a tensor list are
LONG_HEADER = (
    b'{"tensors":[' + b",".join(b'{"name":"layer.%d.weight"}' % i for i in range(40)) + b"]}"
)


def test_layout_bytes() -> None:
    frame = pack_frame(HEADER, b"\x01\x02", compressed=True)
    assert PREFIX_SIZE == 12
    assert frame[:12] == bytes.fromhex("464c524e0101000007000000")
    assert frame[12:19] == HEADER
    assert frame[19:] == b"\x01\x02"


def test_unpack_returns_views_without_copying() -> None:
    data = bytearray(pack_frame(HEADER, b"xyz", compressed=False))
    frame = unpack_frame(data)
    assert not frame.compressed
    assert bytes(frame.header) == HEADER
    assert bytes(frame.payload) == b"xyz"
    data[-1] = ord("!")
    assert bytes(frame.payload) == b"xy!"  # a view into `data`, not a copy


def test_unpack_accepts_memoryviews_of_any_format() -> None:
    data = pack_frame(HEADER, b"", compressed=False) + b"\0"  # 20 bytes: castable to 4-byte ints
    frame = unpack_frame(memoryview(data).cast("I"))
    assert bytes(frame.header) == HEADER
    assert bytes(frame.payload) == b"\0"


def _prefix(
    magic: bytes = b"FLRN", version: int = 1, flags: int = 0, reserved: int = 0, length: int = 7
) -> bytes:
    return (
        magic
        + bytes([version, flags])
        + reserved.to_bytes(2, "little")
        + length.to_bytes(4, "little")
    )


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (b"", "frame", "too short"),
        (b"FLRN\x01\x00\x00\x00\x07\x00\x00", "frame", "too short"),
        (_prefix(magic=b"FLRX") + HEADER, "frame.magic", "bad magic"),
        (_prefix(version=0) + HEADER, "frame.version", "unsupported frame version 0"),
        (_prefix(version=2) + HEADER, "frame.version", "unsupported frame version 2"),
        (_prefix(flags=0x04) + HEADER, "frame.flags", "unknown flag bits 0x04"),
        (_prefix(flags=0x81) + HEADER, "frame.flags", "unknown flag bits 0x81"),
        (_prefix(reserved=1) + HEADER, "frame", "reserved"),
        (_prefix(length=0), "frame.header_length", "outside 2..65536"),
        (_prefix(length=1) + b"{", "frame.header_length", "outside 2..65536"),
        (_prefix(length=65537) + b"{" * 65537, "frame.header_length", "outside 2..65536"),
        (_prefix(length=8) + HEADER, "frame.header_length", "runs past the end"),
        (_prefix(length=2**32 - 1) + HEADER, "frame.header_length", "outside"),
    ],
)
def test_broken_frames_name_the_field(data: bytes, where: str, words: str) -> None:
    with pytest.raises(FrameError) as caught:
        unpack_frame(data)
    assert caught.value.where == where
    assert words in str(caught.value)


def test_limits_apply_before_parsing() -> None:
    data = pack_frame(HEADER, b"\0" * 100, compressed=False)
    with pytest.raises(FrameError, match="over the limit of 64"):
        unpack_frame(data, Limits(max_message_bytes=64))
    with pytest.raises(FrameError, match=r"outside 2\.\.4"):
        unpack_frame(data, Limits(max_header_bytes=4))


def test_only_bytes_like_input() -> None:
    with pytest.raises(FrameError, match="expected bytes, got str"):
        unpack_frame("FLRN")  # type: ignore[arg-type]


def test_a_compressed_header_round_trips_and_is_smaller() -> None:
    data = pack_frame(LONG_HEADER, b"payload", compressed=True, compress_header=True)
    assert data[5] == FLAG_ZSTD | FLAG_ZSTD_HEADER
    assert len(data) < PREFIX_SIZE + len(LONG_HEADER) + len(b"payload")
    assert zstandard.ZstdDecompressor().decompress(data[12:-7]) == LONG_HEADER
    frame = unpack_frame(data)
    assert frame.header_compressed
    assert frame.compressed
    assert bytes(frame.header) == LONG_HEADER
    assert bytes(frame.payload) == b"payload"


def test_a_header_that_zstd_would_grow_travels_plain() -> None:
    data = pack_frame(HEADER, b"", compressed=False, compress_header=True)
    assert data[5] == 0
    assert not unpack_frame(data).header_compressed
    assert bytes(unpack_frame(data).header) == HEADER


def _zstd_header(plain: bytes) -> bytes:
    packed = zstandard.ZstdCompressor().compress(plain)
    return _prefix(flags=FLAG_ZSTD_HEADER, length=len(packed)) + packed


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_prefix(flags=FLAG_ZSTD_HEADER, length=7) + HEADER, "zstd decompression failed"),
        (_zstd_header(b"{"), "decompresses to 1 bytes, too short"),
        (_zstd_header(b" " * 65537), "decompresses to more than the limit of 65536"),
    ],
)
def test_broken_compressed_headers_name_the_header(data: bytes, words: str) -> None:
    with pytest.raises(FrameError) as caught:
        unpack_frame(data)
    assert caught.value.where == "frame.header"
    assert words in str(caught.value)


def test_a_header_bomb_is_refused_without_inflating_it() -> None:
    bomb = _zstd_header(b" " * (64 * 1024 * 1024))  # 64 MiB of spaces, a few KB on the wire
    assert len(bomb) < 8 * 1024
    with pytest.raises(FrameError, match="more than the limit of 65536"):
        unpack_frame(bomb)
