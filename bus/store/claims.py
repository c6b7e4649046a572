"""Claim checks: large messages wait in the object store; the log carries a reference.

The bridge writes the whole original message (`put_claim`) and produces its header with a
`payload_ref` instead of the payload. A consumer calls `resolve_claim` on every record: a
plain message comes back as it is; a claim is fetched, its length and sha256 checked against
the reference, and its header checked against the record's, so a swapped or truncated object
is an error and never a silently different update.
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

from bus.errors import ValidationError
from bus.protocol import AnyEnvelope, PayloadRef, ReleaseManifest, encode_message, peek_header
from bus.protocol.limits import DEFAULT_LIMITS, Limits
from bus.store.base import ObjectStore

_PROBE = "probe"


def claim_key(device_id: str, message_id: str) -> str:
    return f"claims/{device_id}/{message_id}.flrn"


def put_claim(store: ObjectStore, message: bytes, header: AnyEnvelope, device_id: str) -> bytes:
    """Store `message`; return the small record that stands for it in the log."""
    key = claim_key(device_id, str(header.id))
    info = store.put(key, message, content_type="application/vnd.fleetlearn.frame")
    reference = PayloadRef(url=store.url_for(key), sha256=info.sha256, length=info.size)
    return encode_message(header.model_copy(update={"payload": None, "payload_ref": reference}))


def key_for(store: ObjectStore, url: str) -> str:
    """The key of `url` in `store`; a URL outside the store is refused, not fetched."""
    base = store.url_for(_PROBE)[: -len(_PROBE)]
    if not url.startswith(base):
        raise ValidationError(f"{url!r} lies outside the store at {base!r}", where="payload_ref")
    key = url[len(base) :]
    return unquote(key) if base.startswith("file:") else key


def resolve_claim(value: bytes, store: ObjectStore | None, limits: Limits | None = None) -> bytes:
    """The full message for a log record: `value` itself, or the object its claim names."""
    header = peek_header(value)
    reference: PayloadRef | None = getattr(header, "payload_ref", None)
    # A release's payload_ref names model files a device fetches itself: not a claim.
    if reference is None or isinstance(header, ReleaseManifest):
        return value
    if store is None:
        raise ValidationError(
            f"message {header.id} is a claim check on {reference.url}, and no store is configured",
            where="payload_ref",
        )
    limit = (limits or DEFAULT_LIMITS).max_message_bytes
    if reference.length > limit:
        raise ValidationError(
            f"claim of {reference.length} bytes exceeds the limit of {limit}",
            where="payload_ref.length",
        )
    message = store.get(key_for(store, reference.url))
    if len(message) != reference.length:
        raise ValidationError(
            f"object is {len(message)} bytes, the reference says {reference.length}",
            where="payload_ref.length",
        )
    digest = hashlib.sha256(message).hexdigest()
    if digest != reference.sha256:
        raise ValidationError(
            f"object hashes to {digest}, the reference says {reference.sha256}",
            where="payload_ref.sha256",
        )
    stored = peek_header(message)
    if stored.id != header.id or type(stored) is not type(header):
        raise ValidationError(
            f"object holds {stored.kind.value} {stored.id}, the record names "
            f"{header.kind.value} {header.id}",
            where="payload_ref",
        )
    return message
