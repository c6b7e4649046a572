"""`file:///dir`: the object store as a local directory, with atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from bus.errors import ObjectNotFound, ObjectStoreError
from bus.store.base import ObjectInfo, check_key, check_prefix

CHUNK = 1024 * 1024


class FileStore:
    """Objects are files under `root`; a reader never sees half a file (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot create store directory {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str | None = None
    ) -> ObjectInfo:
        """Write atomically. A directory keeps no metadata, so `content_type` is not stored."""
        path = self._path(key)
        digest = hashlib.sha256()
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in _chunks(data):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            fsync_dir(path.parent)
        except OSError as exc:
            raise ObjectStoreError(f"put {key!r} into {self.root} failed: {exc}") from exc
        return ObjectInfo(key, size, digest.hexdigest(), etag=digest.hexdigest())

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"get {key!r} from {self.root} failed: {exc}") from exc

    def get_to_file(self, key: str, path: Path) -> ObjectInfo:
        source = self._path(key)
        digest = hashlib.sha256()
        try:
            with source.open("rb") as src, path.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
        except FileNotFoundError as exc:
            if not source.exists():
                raise ObjectNotFound(f"no object {key!r} in {self.root}") from exc
            raise ObjectStoreError(f"get {key!r} to {path} failed: {exc}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"get {key!r} to {path} failed: {exc}") from exc
        sha256 = digest.hexdigest()
        return ObjectInfo(key, path.stat().st_size, sha256, etag=sha256)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"delete {key!r} from {self.root} failed: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = [
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        ]
        return sorted(k for k in keys if k.startswith(prefix))

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        """A directory has no credentials to sign with: the URL is the file itself."""
        return self.url_for(key)

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        """Like `presign_get`: whoever can reach the directory can already write the file.

        Nothing can PUT to a `file://` URL (urllib opens it for reading and ignores the body),
        so the holder writes the path itself: `urllib.request.url2pathname` of the URL's path.
        The parent directory is created here so that plain write succeeds.
        """
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        return self.url_for(key)

    def url_for(self, key: str) -> str:
        return self._path(key).as_uri()


def _chunks(data: bytes | BinaryIO) -> Iterable[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [bytes(data)]
    return iter(lambda: data.read(CHUNK), b"")


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
