"""One contract for every object store: a directory (`file://`) and a real MinIO (`s3://`)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.errors import ConfigError, ObjectNotFound, ObjectStoreError
from bus.store import ObjectStore, open_store
from bus.store.s3 import S3Store

pytestmark = pytest.mark.integration
MiB = 1024 * 1024

StoreFactory = Callable[[str], ObjectStore]


@pytest.fixture(params=["file", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Returns a factory: prefix -> store; stores made by one factory share a bucket/directory."""
    if request.param == "file":
        return lambda prefix: open_store((tmp_path / "store" / prefix).as_uri())
    s3: Any = request.getfixturevalue("s3")
    bucket = s3.new_bucket()
    return lambda prefix: open_store(s3.url(bucket, prefix))


@pytest.fixture
def store(make_store: StoreFactory) -> ObjectStore:
    return make_store("fleet-a")


def test_put_get_round_trip(store: ObjectStore) -> None:
    info = store.put("models/har/v1.onnx", b"\x00onnx\xff")
    assert info.size == 6
    assert info.sha256 == hashlib.sha256(b"\x00onnx\xff").hexdigest()
    assert info.etag
    assert store.get("models/har/v1.onnx") == b"\x00onnx\xff"
    assert store.exists("models/har/v1.onnx")


def test_large_object_streams_in_parts(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(20 * MiB)  # above the 8 MiB multipart threshold
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    with source.open("rb") as handle:
        info = store.put("payloads/big.bin", handle)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    if isinstance(store, S3Store):  # S3 marks a multipart object's ETag with its part count
        assert info.etag is not None
        assert info.etag.endswith("-3")
    fetched = store.get_to_file("payloads/big.bin", tmp_path / "copy.bin")
    assert fetched.sha256 == info.sha256
    assert fetched.size == 20 * MiB


def test_overwrite_exists_delete(store: ObjectStore) -> None:
    first = store.put("a.bin", b"one")
    second = store.put("a.bin", b"two")
    assert store.get("a.bin") == b"two"
    assert first.etag != second.etag
    store.delete("a.bin")
    assert not store.exists("a.bin")
    store.delete("a.bin")  # deleting what is gone is not an error


def test_list_by_prefix_sorted(store: ObjectStore) -> None:
    for key in ["u/2.bin", "u/1.bin", "v/1.bin"]:
        store.put(key, b"x")
    assert store.list("u/") == ["u/1.bin", "u/2.bin"]
    assert store.list() == ["u/1.bin", "u/2.bin", "v/1.bin"]


def test_missing_key_is_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope.bin")
    with pytest.raises(ObjectNotFound):
        store.get_to_file("nope.bin", tmp_path / "nope")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a\\b", "a//b", "./a"])
def test_invalid_keys_are_refused(store: ObjectStore, key: str, tmp_path: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.get_to_file(key, tmp_path / "out"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presign_get(key),
        lambda: store.presign_put(key),
        lambda: store.url_for(key),
    ]
    for call in calls:
        with pytest.raises(ObjectStoreError, match="key"):
            call()
    assert not (tmp_path / "out").exists()


def test_presigned_get_needs_no_credentials(store: ObjectStore) -> None:
    store.put("release/model.tflite", b"tflite-bytes", content_type="application/x-tflite")
    url = store.presign_get("release/model.tflite", expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"tflite-bytes"
        if url.startswith("http"):  # a directory keeps no metadata; S3 serves what was given
            assert response.headers["Content-Type"] == "application/x-tflite"


def test_presigned_put_then_get(store: ObjectStore) -> None:
    url = store.presign_put("uploads/update.bin", expires_s=60)
    if url.startswith("file://"):
        # A directory has no credentials: the URL is the file path, written directly.
        Path(urllib.request.url2pathname(url.removeprefix("file://"))).write_bytes(b"upd")
    else:
        request = urllib.request.Request(url, data=b"upd", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert store.get("uploads/update.bin") == b"upd"


def test_prefixes_isolate_stores(make_store: StoreFactory) -> None:
    first, second = make_store("fleet-a"), make_store("fleet-b")
    first.put("k.bin", b"a")
    second.put("k.bin", b"b")
    assert first.get("k.bin") == b"a"
    assert second.get("k.bin") == b"b"
    assert first.list() == ["k.bin"]


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        open_store("ftp://host/x")
    with pytest.raises(ConfigError, match="bucket"):
        open_store("s3:///prefix")
    with pytest.raises(ConfigError, match="unknown option"):
        open_store("s3://bucket?endpoit=http://x")
    with pytest.raises(ConfigError, match="5 MiB minimum"):
        open_store("s3://bucket?region=us-east-1", multipart_chunksize=1024)
