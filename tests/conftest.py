"""Session-wide real services for integration and end-to-end tests.

Mosquitto, Kafka and an S3 server (MinIO) start once per test session on free loopback ports,
as local processes, or as containers through testcontainers where a Docker engine answers
(`FLEETLEARN_SERVICES=local|docker` forces one). With `FLEETLEARN_REQUIRE_SERVICES=1` (CI) a
service that cannot start fails the run; otherwise its tests are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus.errors import FleetlearnError

REQUIRE = os.environ.get("FLEETLEARN_REQUIRE_SERVICES") == "1"


def _mode() -> str:
    mode = os.environ.get("FLEETLEARN_SERVICES", "auto")
    if mode == "auto":
        from fleetlearn.services.containers import docker_available

        return "docker" if docker_available() else "local"
    return mode


def start_service(name: str, service: Any) -> Any:
    try:
        service.start()
    except (FleetlearnError, OSError, Exception) as exc:  # any start failure is reported alike
        message = f"{name} could not start: {exc}"
        if REQUIRE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return service


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(services_dir: Path) -> Iterator[Any]:
    if _mode() == "docker":
        from fleetlearn.services.containers import MosquittoContainer

        service: Any = MosquittoContainer()
    else:
        from fleetlearn.services.mosquitto import MosquittoService

        service = MosquittoService(services_dir / "mosquitto")
    start_service("mosquitto", service)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kafka(services_dir: Path) -> Iterator[Any]:
    if _mode() == "docker":
        from fleetlearn.services.containers import KafkaContainer

        service: Any = KafkaContainer()
    else:
        from fleetlearn.services.kafka import KafkaService

        service = KafkaService(services_dir / "kafka")
    start_service("kafka", service)
    yield service
    service.stop()


@dataclass
class S3Handle:
    """What tests need of the S3 server: where it is, its keys, and fresh buckets."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        path = f"/{prefix.strip('/')}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint={self.endpoint}&region={self.region}"


@pytest.fixture(scope="session")
def s3(services_dir: Path) -> Iterator[S3Handle]:
    if _mode() == "docker":
        from fleetlearn.services.containers import MinioContainer

        service: Any = MinioContainer()
    else:
        from fleetlearn.services.minio import MinioService

        service = MinioService(services_dir / "minio")
    start_service("minio", service)
    handle = S3Handle(service.endpoint, service.access_key, service.secret_key, service.region)
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID=handle.access_key,
        AWS_SECRET_ACCESS_KEY=handle.secret_key,
        AWS_DEFAULT_REGION=handle.region,
    )
    yield handle
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    service.stop()
