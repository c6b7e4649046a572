"""The same services as Docker containers through testcontainers, where a Docker engine runs.

Users' laptops and CI runners usually have Docker; this machine's kind does not. The handles
expose the same attributes as the local-process services, so the test fixtures do not care.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from fleetlearn.services.base import ServiceError, port_open

MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.20"
KAFKA_IMAGE = "apache/kafka:4.1.1"
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _wait_port(host: str, port: int, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise ServiceError(f"{name} container did not open {host}:{port} within {timeout:.0f} s")


@dataclass
class MosquittoContainer:
    container: Any = field(default=None, init=False)
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        from testcontainers.core.container import DockerContainer

        config = (
            "listener 1883\nallow_anonymous true\npersistence true\n"
            "persistence_location /mosquitto/data/\nmax_queued_messages 0\n"
        )
        self.container = (
            DockerContainer(MOSQUITTO_IMAGE)
            .with_exposed_ports(1883)
            .with_command(
                ["sh", "-c", f"printf '{config}' > /tmp/m.conf && exec mosquitto -c /tmp/m.conf"]
            )
        )
        self.container.start()
        self.host = self.container.get_container_host_ip()
        self.port = int(self.container.get_exposed_port(1883))
        _wait_port(self.host, self.port, 30, "mosquitto")

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()


@dataclass
class KafkaContainer:
    container: Any = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return str(self.container.get_bootstrap_server())

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> None:
        from testcontainers.kafka import KafkaContainer as TcKafka

        self.container = TcKafka(KAFKA_IMAGE).with_kraft()
        self.container.start()

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()


@dataclass
class MinioContainer:
    container: Any = field(default=None, init=False)
    access_key: str = "fleetlearn"
    secret_key: str = "fleetlearn-test-secret"
    region: str = "us-east-1"
    endpoint: str = ""

    def start(self) -> None:
        from testcontainers.minio import MinioContainer as TcMinio

        self.container = TcMinio(
            MINIO_IMAGE, access_key=self.access_key, secret_key=self.secret_key
        )
        self.container.start()
        host = self.container.get_container_host_ip()
        self.endpoint = f"http://{host}:{self.container.get_exposed_port(9000)}"

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()
