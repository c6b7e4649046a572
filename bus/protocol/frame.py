"""The binary frame around every message: magic, version, flags, header length, header, payload.

offset size field
0      4    magic b"FLRN"
4      1    frame version (1)
5      1    flags (bit 0: payload is zstd-compressed; bit 1: header is zstd-compressed)
6      2    reserved, zero
8      4    header length H (on the wire), u32 little-endian
12     H    header, UTF-8 JSON (one zstd frame of it with bit 1)
12+H   ...  payload

Why a compressed header: a small model's update is mostly header. A 12k-weight CNN's top-k
update carries a 1.1 KB tensor list and 0.6 KB of payload; zstd takes the header to a third.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from bus.errors import FrameError
from bus.protocol.limits import DEFAULT_LIMITS, Limits

MAGIC = b"FLRN"
FRAME_VERSION = 1
FLAG_ZSTD = 0x01
FLAG_ZSTD_HEADER = 0x02
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_ZSTD_HEADER
HEADER_ZSTD_LEVEL = 3
_PREFIX = struct.Struct("<4sBBHI")
PREFIX_SIZE = _PREFIX.size  # 12


@dataclass(frozen=True)
class Frame:
    """The parts of a frame: views into the received bytes (nothing is copied), but for a
    compressed header, which is decompressed (it is small and bounded)."""

    compressed: bool
    header: memoryview
    payload: memoryview
    header_compressed: bool = False


def pack_frame(
    header: bytes, payload: bytes, *, compressed: bool, compress_header: bool = False
) -> bytes:
    """Frame `header` (plain JSON) and `payload` (already compressed when `compressed`).

    With `compress_header` the header travels as zstd when that makes it smaller."""
    flags = FLAG_ZSTD if compressed else 0
    if compress_header:
        packed = zstandard.ZstdCompressor(level=HEADER_ZSTD_LEVEL).compress(header)
        if len(packed) < len(header):
            header, flags = packed, flags | FLAG_ZSTD_HEADER
    return _PREFIX.pack(MAGIC, FRAME_VERSION, flags, 0, len(header)) + header + payload


def unpack_frame(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Split `data` into header and payload, checking every fixed field of the frame."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"expected bytes, got {type(data).__name__}", where="frame")
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    if len(view) > limits.max_message_bytes:
        raise FrameError(
            f"message is {len(view)} bytes, over the limit of {limits.max_message_bytes}",
            where="frame",
        )
    if len(view) < PREFIX_SIZE:
        raise FrameError(f"{len(view)} bytes is too short for a frame (12 at least)", where="frame")
    magic, version, flags, reserved, header_length = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}", where="frame.magic")
    if version != FRAME_VERSION:
        raise FrameError(
            f"unsupported frame version {version} (this receiver knows {FRAME_VERSION})",
            where="frame.version",
        )
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown flag bits 0x{flags:02x}", where="frame.flags")
    if reserved:
        raise FrameError(f"reserved bytes must be zero, got 0x{reserved:04x}", where="frame")
    if not 2 <= header_length <= limits.max_header_bytes:
        raise FrameError(
            f"header length {header_length} outside 2..{limits.max_header_bytes}",
            where="frame.header_length",
        )
    end = PREFIX_SIZE + header_length
    if end > len(view):
        raise FrameError(
            f"header length {header_length} runs past the end of a {len(view)}-byte message",
            where="frame.header_length",
        )
    header = view[PREFIX_SIZE:end]
    if flags & FLAG_ZSTD_HEADER:
        header = _decompress_header(header, limits.max_header_bytes)
    return Frame(bool(flags & FLAG_ZSTD), header, view[end:], bool(flags & FLAG_ZSTD_HEADER))


def _decompress_header(wire: memoryview, bound: int) -> memoryview:
    """At most `bound` bytes come out, so a zstd bomb in a header costs nothing."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(wire)) as reader:
            plain = reader.read(bound + 1)
            while len(plain) <= bound and (more := reader.read(bound + 1 - len(plain))):
                plain += more
    except zstandard.ZstdError as exc:
        raise FrameError(f"zstd decompression failed ({exc})", where="frame.header") from exc
    if len(plain) > bound:
        raise FrameError(
            f"decompresses to more than the limit of {bound} bytes", where="frame.header"
        )
    if len(plain) < 2:
        raise FrameError(
            f"decompresses to {len(plain)} bytes, too short for a header", where="frame.header"
        )
    return memoryview(plain)
