"""The object-store interface: where model files and large payloads live, by key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from bus.errors import ObjectStoreError


@dataclass(frozen=True)
class ObjectInfo:
    """What was stored. `sha256` is computed by us while streaming, so it is the same on every
    backend and can go into a message reference; `etag` is the backend's own version tag
    (S3's ETag, which is not a content hash for multipart uploads; for files, the sha256)."""

    key: str
    size: int
    sha256: str
    etag: str | None = None


class ObjectStore(Protocol):
    """Put and get whole objects; hand out URLs a device can use without credentials."""

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str | None = None
    ) -> ObjectInfo: ...

    def get(self, key: str) -> bytes: ...

    def get_to_file(self, key: str, path: Path) -> ObjectInfo: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def presign_get(self, key: str, expires_s: int = 3600) -> str: ...

    def presign_put(self, key: str, expires_s: int = 3600) -> str: ...

    def url_for(self, key: str) -> str: ...


def check_key(key: str) -> str:
    """Keys are relative, `/`-separated, without `..` or backslashes: never a path escape."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise ObjectStoreError(f"object key must be 1-1024 characters (got {key!r})")
    parts = key.split("/")
    if (
        key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in {"", ".", ".."} for p in parts)
    ):
        raise ObjectStoreError(
            f"object key {key!r} must be relative, without empty, '.' or '..' segments "
            "or backslashes"
        )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix may end mid-name (`models/v1`), but never escapes upwards."""
    if not isinstance(prefix, str) or ".." in prefix.split("/") or "\\" in prefix:
        raise ObjectStoreError(f"listing prefix {prefix!r} must not contain '..' or backslashes")
    return prefix
