"""The directory store's own promises: atomic writes, hidden temp files, what a file:// URL is."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bus.errors import ConfigError, ObjectStoreError
from bus.store import open_store
from bus.store.file import FileStore


class _Breaks(io.RawIOBase):
    """A source that dies after its first megabyte, like a dropped upload."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError("connection reset")
        return b"n" * (1024 * 1024)


def test_a_failed_write_keeps_the_old_object_and_no_temp_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("m/v1.onnx", b"old")
    with pytest.raises(ObjectStoreError, match=r"m/v1\.onnx"):
        store.put("m/v1.onnx", _Breaks())  # type: ignore[arg-type]
    assert store.get("m/v1.onnx") == b"old"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["v1.onnx"]


def test_listing_hides_temp_files_and_is_sorted(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for key in ["b/2", "a/1", "b/1"]:
        store.put(key, b"x")
    (tmp_path / "b" / ".tmp-half").write_bytes(b"partial")
    assert store.list() == ["a/1", "b/1", "b/2"]
    assert store.list("b/") == ["b/1", "b/2"]
    with pytest.raises(ObjectStoreError, match="prefix"):
        store.list("../")


def test_presigned_put_url_is_the_path_and_cannot_be_put_to(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    url = store.presign_put("uploads/u.bin", expires_s=60)
    request = urllib.request.Request(url, data=b"body", method="PUT")
    with pytest.raises(urllib.error.URLError):  # urllib reads file:// URLs; it never writes
        urllib.request.urlopen(request, timeout=5)
    assert not store.exists("uploads/u.bin")
    Path(urllib.request.url2pathname(url.removeprefix("file://"))).write_bytes(b"body")
    assert store.get("uploads/u.bin") == b"body"


def test_file_urls_need_an_absolute_directory() -> None:
    with pytest.raises(ConfigError):
        open_store("file://")
