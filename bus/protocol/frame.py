"""The binary frame around every message: magic, version, flags, header length, header, payload.

offset size field
0      4    magic b"FLRN"
4      1    frame version (1)
5      1    flags (bit 0: payload is zstd-compressed)
6      2    reserved, zero
8      4    header length H, u32 little-endian
12     H    header, UTF-8 JSON
12+H   ...  payload
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bus.errors import FrameError
from bus.protocol.limits import DEFAULT_LIMITS, Limits

MAGIC = b"FLRN"
FRAME_VERSION = 1
FLAG_ZSTD = 0x01
_KNOWN_FLAGS = FLAG_ZSTD
_PREFIX = struct.Struct("<4sBBHI")
PREFIX_SIZE = _PREFIX.size  # 12


@dataclass(frozen=True)
class Frame:
    """The parts of a frame, as views into the received bytes (nothing is copied)."""

    compressed: bool
    header: memoryview
    payload: memoryview


def pack_frame(header: bytes, payload: bytes, *, compressed: bool) -> bytes:
    flags = FLAG_ZSTD if compressed else 0
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
    return Frame(bool(flags & FLAG_ZSTD), view[PREFIX_SIZE:end], view[end:])
