"""`mqtts://` with username and password against a real Mosquitto that demands both."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bus.errors import ConnectError
from bus.mqtt import connect_mqtt
from fleetlearn.services.mosquitto import MosquittoService

pytestmark = pytest.mark.integration


def _write_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetlearn test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    directory = tmp_path_factory.mktemp("secured-mosquitto")
    ca, cert, key = _write_pki(directory)
    passwords = directory / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "pi-01", "right-password"],
        check=True,
        timeout=30,
    )
    passwords.chmod(0o600)
    service = MosquittoService(
        directory,
        extra_config=(
            f"certfile {cert}\nkeyfile {key}\npassword_file {passwords}\nallow_anonymous false\n"
        ),
    )
    service.start()
    yield service.port, ca
    service.stop()


def test_tls_with_password_connects_and_publishes(secured: tuple[int, Path]) -> None:
    port, ca = secured
    client = connect_mqtt(
        f"mqtts://pi-01:right-password@127.0.0.1:{port}?ca={ca}", client_id=uuid.uuid4().hex
    )
    client.publish("fleetlearn/f/devices/pi-01/status", b"hello").wait(10)
    client.close()


def test_wrong_password_is_refused(secured: tuple[int, Path]) -> None:
    port, ca = secured
    with pytest.raises(ConnectError, match="refused") as caught:
        connect_mqtt(
            f"mqtts://pi-01:wrong@127.0.0.1:{port}?ca={ca}", client_id=uuid.uuid4().hex, timeout=5
        )
    assert "wrong" not in str(caught.value)


def test_untrusted_certificate_is_refused(secured: tuple[int, Path]) -> None:
    port, _ = secured
    with pytest.raises(ConnectError, match=r"(?i)certificate"):
        connect_mqtt(
            f"mqtts://pi-01:right-password@127.0.0.1:{port}", client_id=uuid.uuid4().hex, timeout=5
        )
