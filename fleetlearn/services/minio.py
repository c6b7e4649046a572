"""A real MinIO server (S3-compatible) on a loopback port, built from source once and cached."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fleetlearn.services.base import ServiceError, ServiceProcess, free_port, tail
from fleetlearn.services.install import ensure_minio


@dataclass
class MinioService:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    access_key: str = "fleetlearn"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    # Buckets to create once the server is up (a developer's `services up` gets `fleetlearn`).
    buckets: tuple[str, ...] = ()
    process: ServiceProcess | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "FLEETLEARN_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def start(self, timeout: float = 60.0) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        console_port = free_port(self.host)
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_REGION=self.region,
            MINIO_BROWSER="off",
            MINIO_UPDATE="off",
        )
        argv = [
            str(ensure_minio()),
            "server",
            str(data),
            "--quiet",
            "--address",
            f"{self.host}:{self.port}",
            "--console-address",
            f"{self.host}:{console_port}",
        ]
        self.process = ServiceProcess("minio", argv, self.workdir / "minio.log", env=env)
        self.process.start()
        self.process.wait_ready(self.host, self.port, timeout)
        self._wait_healthy(timeout)
        self._create_buckets()

    def _create_buckets(self) -> None:
        if not self.buckets:
            return
        import boto3  # the cloud extra; only needed when buckets are asked for

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)

    def _wait_healthy(self, timeout: float) -> None:
        url = f"{self.endpoint}/minio/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        log = self.workdir / "minio.log"
        raise ServiceError(f"minio was not ready within {timeout:.0f} s:\n{tail(log)}")

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def kill(self) -> None:
        if self.process:
            self.process.kill()
