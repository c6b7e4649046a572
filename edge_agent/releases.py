"""Checking a release before it runs: Ed25519 signature, then each file's size and sha256.

A device trusts a model only if the fleet's release key signed its manifest and every file
matches the manifest byte for byte. Every check failure is a `ReleaseRejected` that says
which file and which check; the caller keeps serving the model it has.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bus.errors import ConfigError, ValidationError
from bus.protocol import ModelFile, ReleaseManifest, signing_bytes

CHUNK = 1 << 16


class ReleaseRejected(ValidationError):
    """The release must not be installed; the reason names the file and the check."""


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """The fleet's release keys: `{key_id}.pem` files, each an Ed25519 public key."""
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        raise ConfigError(f"release key directory {directory} does not exist")
    for path in sorted(directory.glob("*.pem")):
        try:
            key = load_pem_public_key(path.read_bytes())
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path}: an Ed25519 public key is required")
        keys[path.stem] = key
    if not keys:
        raise ConfigError(f"no release keys (*.pem) in {directory}")
    return keys


def verify_signature(manifest: ReleaseManifest, keys: Mapping[str, Ed25519PublicKey]) -> None:
    if manifest.signature is None:
        raise ReleaseRejected("the release is not signed", where="release.signature")
    key = keys.get(manifest.key_id)
    if key is None:
        raise ReleaseRejected(
            f"signed with unknown key {manifest.key_id!r} (known: {sorted(keys)})",
            where="release.key_id",
        )
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
        key.verify(signature, signing_bytes(manifest))
    except (InvalidSignature, ValueError) as exc:
        raise ReleaseRejected(
            f"the signature does not verify with key {manifest.key_id!r}",
            where="release.signature",
        ) from exc


def verify_file(spec: ModelFile, data: bytes) -> None:
    where = f"release.files[{spec.name!r}]"
    if len(data) != spec.size:
        what = "truncated" if len(data) < spec.size else "too long"
        raise ReleaseRejected(
            f"{what}: {len(data)} bytes, the manifest says {spec.size}", where=where
        )
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ReleaseRejected("sha256 does not match the manifest", where=where)


def fetch(spec: ModelFile, *, timeout: float = 60.0) -> bytes:
    """Download a file named by URL (http, https, file), never reading past its stated size."""
    where = f"release.files[{spec.name!r}]"
    if spec.url is None:
        raise ReleaseRejected("rides inline: nothing to download", where=where)
    scheme = urllib.parse.urlsplit(spec.url).scheme
    if scheme not in {"http", "https", "file"}:
        raise ReleaseRejected(f"unsupported URL scheme {scheme!r}", where=f"{where}.url")
    chunks: list[bytes] = []
    received = 0
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response:
            while received <= spec.size:
                chunk = response.read(min(CHUNK, spec.size + 1 - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ReleaseRejected(
            f"download failed after {received} bytes: {exc}", where=where
        ) from exc
    return b"".join(chunks)


def verify_release(
    manifest: ReleaseManifest,
    files: Mapping[str, bytes],
    keys: Mapping[str, Ed25519PublicKey],
    *,
    required: Iterable[str] | None = None,
) -> None:
    """Signature first (an unsigned manifest's sizes and hashes mean nothing), then files.

    `required` names the files this device needs (all of them by default): the signature
    covers every file's size and hash, so checking only the fetched ones is just as safe.
    """
    verify_signature(manifest, keys)
    listed = {f.name: f for f in manifest.files}
    needed = set(listed) if required is None else set(required)
    missing = sorted(needed - set(files))
    if missing:
        raise ReleaseRejected(f"files missing: {missing}", where="release.files")
    unknown = sorted(set(files) - set(listed))
    if unknown:
        raise ReleaseRejected(f"files not in the manifest: {unknown}", where="release.files")
    for name, data in files.items():
        verify_file(listed[name], data)
