"""Installs what the local services need, once, into the cache: Mosquitto, Kafka jars, MinIO.

Each step is idempotent and quick when already done, so `make test` can call it every time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fleetlearn.services.base import ServiceError, cache_dir

MINIO_MODULE = "github.com/minio/minio@latest"


def repo_root() -> Path:
    """The checkout this package runs from; the Kafka pom and configs live under its infra/."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "infra" / "kafka" / "pom.xml").is_file():
            return parent
    override = os.environ.get("FLEETLEARN_INFRA")
    if override:
        return Path(override).resolve().parent
    raise ServiceError(
        "cannot find infra/kafka/pom.xml: run from a fleetlearn checkout or set FLEETLEARN_INFRA"
    )


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise ServiceError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise ServiceError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))


def mosquitto_binary() -> Path:
    """Mosquitto from PATH or Debian's location (sbin is not always on a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if found is None:
        raise ServiceError(
            "mosquitto is not installed: run `fleetlearn services install` as root "
            "(apt-get install mosquitto) or install it with your package manager"
        )
    return Path(found)


def _apt_install(package: str) -> None:
    _run(["apt-get", "update", "-qq"], "apt-get update")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "-qq", package], f"apt-get install {package}", env)


def ensure_shellcheck() -> Path:
    """The device install script is linted by the tests, as the Python code is."""
    found = shutil.which("shellcheck")
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ServiceError("shellcheck is not installed: apt-get install shellcheck")
        _apt_install("shellcheck")
        found = shutil.which("shellcheck")
    if found is None:
        raise ServiceError("apt-get install shellcheck finished but shellcheck is not on PATH")
    return Path(found)


def ensure_mosquitto() -> Path:
    try:
        return mosquitto_binary()
    except ServiceError:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise
    _apt_install("mosquitto")
    # Debian starts a system broker on 1883; ours run on their own ports, so stop it if it runs.
    subprocess.run(["service", "mosquitto", "stop"], capture_output=True, check=False)
    return mosquitto_binary()


def kafka_libs_dir() -> Path:
    return cache_dir() / "kafka" / "libs"


def ensure_kafka_libs() -> Path:
    """Resolve Kafka's jars from Maven Central with infra/kafka/pom.xml (about 10 s, once)."""
    libs = kafka_libs_dir()
    if any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise ServiceError("Kafka needs Java 17+ and Maven (mvn) on PATH to resolve its jars")
    pom = repo_root() / "infra" / "kafka" / "pom.xml"
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    _run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ],
        "resolving Kafka jars with Maven",
    )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def minio_binary_path() -> Path:
    return cache_dir() / "go" / "bin" / "minio"


def ensure_minio() -> Path:
    """Build MinIO from source with `go install` (about 2-3 minutes, once; cached afterwards)."""
    override = os.environ.get("FLEETLEARN_MINIO_BIN") or shutil.which("minio")
    if override:
        return Path(override)
    binary = minio_binary_path()
    if binary.is_file():
        return binary
    if shutil.which("go") is None:
        raise ServiceError("building MinIO needs Go on PATH (or set FLEETLEARN_MINIO_BIN)")
    gopath = cache_dir() / "go"
    env = dict(os.environ, GOPATH=str(gopath), GOFLAGS="-mod=mod", CGO_ENABLED="0")
    _run(["go", "install", MINIO_MODULE], "building MinIO with go install", env)
    if not binary.is_file():
        raise ServiceError(f"go install finished but {binary} is missing")
    return binary


def ensure_all() -> dict[str, Path]:
    return {
        "mosquitto": ensure_mosquitto(),
        "kafka": ensure_kafka_libs(),
        "minio": ensure_minio(),
        "shellcheck": ensure_shellcheck(),
    }
