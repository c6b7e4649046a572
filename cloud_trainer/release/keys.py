"""The fleet's release signing key: the private half stays in the cloud, the public half ships.

`generate_keypair` writes `{key_id}.key` (PKCS8 PEM, mode 0600) for the trainer's secret store
and `{key_id}.pem` (SubjectPublicKeyInfo PEM, mode 0644), the file `edge_agent.releases`
loads on every device. Keys are written once: an existing file is never replaced, because a
lost private key means re-keying every device, and a silently replaced one means devices
reject every release signed from then on.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.errors import ConfigError
from bus.store.file import fsync_dir

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class KeyPaths:
    """Where a generated key pair was written."""

    key_id: str
    private: Path
    """`{key_id}.key`: the signing key, for the cloud's secret store only."""
    public: Path
    """`{key_id}.pem`: the verifying key, for every device's release key directory."""


def check_key_id(key_id: str) -> str:
    """A key id names files and travels in every manifest: 1-128 of A-Z a-z 0-9 . _ -."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigError(f"key id must be 1-128 characters of A-Z a-z 0-9 . _ - (got {key_id!r})")
    return key_id


def generate_keypair(directory: Path, key_id: str) -> KeyPaths:
    """A new Ed25519 pair in `directory`; refuses if either file already exists."""
    check_key_id(key_id)
    paths = KeyPaths(key_id, directory / f"{key_id}.key", directory / f"{key_id}.pem")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create key directory {directory}: {exc}") from exc
    for path in (paths.private, paths.public):
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path} already exists: refusing to overwrite a release key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(paths.private, private_pem, PRIVATE_MODE)
    try:
        _write_new(paths.public, public_pem, PUBLIC_MODE)
    except BaseException:
        paths.private.unlink(missing_ok=True)  # half a pair is no use to anyone
        raise
    fsync_dir(directory)
    return paths


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, complete and with `mode` from its first byte.

    mkstemp creates the temp file 0600, so the private key is never readable by others, not
    even briefly; a hard link then publishes it under its name and fails, rather than
    replacing, if the name was taken in the meantime. A crash leaves at most a hidden temp file.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists: refusing to overwrite a release key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    finally:
        Path(temp).unlink(missing_ok=True)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`: an unencrypted PKCS8 PEM Ed25519 key, readable by us alone."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"release signing key {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read release signing key {path}: {exc}") from exc
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~PRIVATE_MODE:
        raise ConfigError(
            f"release signing key {path} has mode {mode:04o}, wider than 0600: "
            f"run `chmod 600 {path}` (and check who may have copied it)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read release signing key {path}: {exc}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"release signing key {path} is not a PEM file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "it is encrypted"
        raise ConfigError(
            f"release signing key {path} is encrypted; an unencrypted PKCS8 key is required"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"release signing key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"release signing key {path} is not an Ed25519 key (found {type(key).__name__})"
        )
    return key
