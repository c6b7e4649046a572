"""Size limits a receiver enforces before it allocates anything for a message."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one message; defaults suit model updates of tens of millions of floats."""

    max_message_bytes: int = 64 * MiB
    max_header_bytes: int = 64 * 1024
    max_tensors: int = 4096
    max_raw_payload_bytes: int = 256 * MiB
    max_ndim: int = 8
    # top-k expands on decoding: 1% of a model's values arrive, the whole model comes out
    max_decoded_bytes: int = 1024 * MiB


DEFAULT_LIMITS = Limits()
