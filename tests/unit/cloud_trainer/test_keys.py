"""Release signing keys: written once with safe modes, loaded with clear errors, device-ready."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from bus.errors import ConfigError
from cloud_trainer.release.keys import generate_keypair, load_private_key
from edge_agent.releases import load_public_keys
from fleetlearn.cli import app


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_pair_signs_what_the_device_key_verifies(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path / "keys", "fleet-a")
    assert paths.private == tmp_path / "keys" / "fleet-a.key"
    assert paths.public == tmp_path / "keys" / "fleet-a.pem"
    assert (mode(paths.private), mode(paths.public)) == (0o600, 0o644)
    assert paths.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert paths.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    key = load_private_key(paths.private)
    public = load_public_keys(paths.public.parent)["fleet-a"]
    public.verify(key.sign(b"manifest"), b"manifest")
    assert sorted(p.name for p in paths.private.parent.iterdir()) == ["fleet-a.key", "fleet-a.pem"]


def test_private_key_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = generate_keypair(tmp_path, "k")
    finally:
        os.umask(old)
    assert (mode(paths.private), mode(paths.public)) == (0o600, 0o644)


@pytest.mark.parametrize("existing", ["k.key", "k.pem"])
def test_refuses_to_overwrite_either_file(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"keep me")
    with pytest.raises(ConfigError, match=rf"{existing} already exists"):
        generate_keypair(tmp_path, "k")
    assert (tmp_path / existing).read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


@pytest.mark.parametrize("key_id", ["", "a/b", "../x", "a b", "k" * 129, "ключ"])
def test_rejects_bad_key_ids(tmp_path: Path, key_id: str) -> None:
    with pytest.raises(ConfigError, match="key id must be 1-128 characters"):
        generate_keypair(tmp_path, key_id)
    assert list(tmp_path.iterdir()) == []


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.key does not exist"):
        load_private_key(tmp_path / "nope.key")


@pytest.mark.parametrize("wide", [0o644, 0o640, 0o604, 0o700])
def test_load_refuses_wider_permissions_naming_the_mode(tmp_path: Path, wide: int) -> None:
    paths = generate_keypair(tmp_path, "k")
    paths.private.chmod(wide)
    with pytest.raises(ConfigError, match=f"mode {wide:04o}, wider than 0600"):
        load_private_key(paths.private)


def test_load_accepts_stricter_permissions(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path, "k")
    paths.private.chmod(0o400)
    load_private_key(paths.private)


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_refuses_non_pem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a PEM file"):
        load_private_key(write_private(tmp_path / "x.key", b"\x00\x01 binary"))


def test_load_refuses_a_public_key_or_garbage_pem(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path, "k")
    wrong = write_private(tmp_path / "pub.key", paths.public.read_bytes())
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_private_key(wrong)


def test_load_refuses_other_key_types(tmp_path: Path) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(write_private(tmp_path / "rsa.key", pem))


def test_load_refuses_encrypted_keys(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path, "k")
    key = load_private_key(paths.private)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_private_key(write_private(tmp_path / "enc.key", pem))


def test_cli_generates_prints_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = CliRunner().invoke(app, ["keys", "generate", "--out", str(out), "--key-id", "k1"])
    assert result.exit_code == 0, result.output
    private, public = out / "k1.key", out / "k1.pem"
    assert str(private) in result.output
    assert str(public) in result.output
    assert "secret store" in result.output
    assert "device" in result.output
    assert (mode(private), mode(public)) == (0o600, 0o644)
    before = private.read_bytes()

    again = CliRunner().invoke(app, ["keys", "generate", "--out", str(out), "--key-id", "k1"])
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == [
        f"error: {private} already exists: refusing to overwrite a release key"
    ]
    assert private.read_bytes() == before


def test_cli_default_key_id_is_dated(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2
    stem = names[0].removesuffix(".key")
    assert stem.startswith("fleet-")
    assert len(stem) == len("fleet-yyyymmdd")
    assert names == [f"{stem}.key", f"{stem}.pem"]


def test_cli_bad_key_id_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "a/b"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: key id must be")
    assert len(result.output.strip().splitlines()) == 1
