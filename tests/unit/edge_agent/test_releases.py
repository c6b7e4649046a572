"""A release runs only if its signature and every file check out; otherwise the old model stays."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.errors import ConfigError
from bus.protocol import ModelFile, ReleaseManifest, signing_bytes
from edge_agent.model_store import ModelStore
from edge_agent.releases import (
    ReleaseRejected,
    fetch,
    load_public_keys,
    verify_release,
)

KEY = Ed25519PrivateKey.generate()
KEYS = {"fleet-2026": KEY.public_key()}


def release(
    version: int,
    data: bytes,
    *,
    key: Ed25519PrivateKey = KEY,
    size: int | None = None,
    url: str | None = None,
) -> ReleaseManifest:
    spec = ModelFile(
        name="model.onnx",
        format="onnx",
        quantization="int8",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data) if size is None else size,
        url=url,
    )
    unsigned = ReleaseManifest(
        fleet="farm", model="har", version=version, files=(spec,), key_id="fleet-2026"
    )
    signature = base64.b64encode(key.sign(signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature})


def store_with_v1(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    first = release(1, b"model one")
    verify_release(first, {"model.onnx": b"model one"}, KEYS)
    store.activate(store.install(first, {"model.onnx": b"model one"}))
    return store


def test_a_good_release_installs_and_becomes_active(tmp_path: Path) -> None:
    store = store_with_v1(tmp_path)
    second = release(2, b"model two")
    verify_release(second, {"model.onnx": b"model two"}, KEYS)
    store.activate(store.install(second, {"model.onnx": b"model two"}))
    active = store.active("har")
    assert active is not None
    assert active.version == 2
    assert active.file("onnx").read_bytes() == b"model two"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("tampered bytes", "sha256 does not match"),
        ("wrong signature", "signature does not verify"),
        ("wrong size", "too long"),
        ("unsigned", "not signed"),
        ("unknown key", "unknown key"),
        ("file missing", "files missing"),
    ],
)
def test_a_bad_release_is_rejected_and_the_old_model_stays(
    tmp_path: Path, case: str, match: str
) -> None:
    store = store_with_v1(tmp_path)
    good = b"model two"
    manifest, files = release(2, good), {"model.onnx": good}
    if case == "tampered bytes":
        files = {"model.onnx": b"model twX"}
    elif case == "wrong signature":
        manifest = release(2, good, key=Ed25519PrivateKey.generate())
    elif case == "wrong size":
        manifest = release(2, good, size=len(good) - 1)
    elif case == "unsigned":
        manifest = manifest.model_copy(update={"signature": None})
    elif case == "unknown key":
        manifest = manifest.model_copy(update={"key_id": "someone-else"})
    elif case == "file missing":
        files = {}
    with pytest.raises(ReleaseRejected, match=match):
        verify_release(manifest, files, KEYS)
    active = store.active("har")
    assert active is not None
    assert active.version == 1
    assert active.file("onnx").read_bytes() == b"model one"


def test_an_edited_manifest_no_longer_verifies(tmp_path: Path) -> None:
    manifest = release(2, b"model two").model_copy(update={"version": 3})
    with pytest.raises(ReleaseRejected, match="signature"):
        verify_release(manifest, {"model.onnx": b"model two"}, KEYS)


def test_a_truncated_download_is_rejected(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    served = tmp_path / "served.onnx"
    served.write_bytes(data[:-1000])  # the transfer stopped early
    manifest = release(2, data, url=served.as_uri())
    got = fetch(manifest.files[0])
    with pytest.raises(ReleaseRejected, match="truncated"):
        verify_release(manifest, {"model.onnx": got}, KEYS)


def test_a_download_never_reads_past_the_stated_size(tmp_path: Path) -> None:
    served = tmp_path / "served.onnx"
    served.write_bytes(b"x" * 1_000_000)
    manifest = release(2, b"x" * 10, url=served.as_uri())
    assert len(fetch(manifest.files[0])) == 11  # one byte more proves it is too long
    with pytest.raises(ReleaseRejected, match="download failed"):
        fetch(release(2, b"x", url=(tmp_path / "absent").as_uri()).files[0])
    with pytest.raises(ReleaseRejected, match="scheme"):
        fetch(release(2, b"x", url="ftp://host/model.onnx").files[0])


def test_rollback_returns_to_the_previous_model_and_old_versions_are_pruned(
    tmp_path: Path,
) -> None:
    store = store_with_v1(tmp_path)
    for version in range(2, 6):
        data = f"model {version}".encode()
        store.activate(store.install(release(version, data), {"model.onnx": data}))
    assert store.versions("har") == [3, 4, 5]
    back = store.rollback("har")
    assert back is not None
    assert back.version == 4
    active = store.active("har")
    assert active is not None
    assert active.version == 4


def test_release_keys_load_from_pem_files(tmp_path: Path) -> None:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "fleet-2026.pem").write_bytes(pem)
    keys = load_public_keys(tmp_path)
    verify_release(release(1, b"m"), {"model.onnx": b"m"}, keys)
    (tmp_path / "broken.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"broken\.pem"):
        load_public_keys(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_keys(tmp_path / "missing")
