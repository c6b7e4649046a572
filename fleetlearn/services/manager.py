"""Starts the local services as background processes for a developer, and remembers them.

`fleetlearn services up` leaves Mosquitto, Kafka and MinIO running after the command exits; a
small JSON state file records their pids and endpoints so `status` and `down` can find them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetlearn.services.base import ServiceError, cache_dir, port_open
from fleetlearn.services.kafka import KafkaService
from fleetlearn.services.minio import MinioService
from fleetlearn.services.mosquitto import MosquittoService

SERVICE_NAMES = ("mosquitto", "kafka", "minio")


@dataclass(frozen=True)
class RunningService:
    name: str
    pid: int
    host: str
    port: int
    env: dict[str, str]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def serving(self) -> bool:
        return self.alive() and port_open(self.host, self.port)


def state_dir() -> Path:
    path = Path(os.environ.get("FLEETLEARN_SERVICES_DIR") or cache_dir() / "services")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_file() -> Path:
    return state_dir() / "state.json"


def load_state() -> dict[str, RunningService]:
    path = _state_file()
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {name: RunningService(**entry) for name, entry in raw.items()}
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"{path} is not a valid services state file: {exc}") from exc


def _save_state(state: dict[str, RunningService]) -> None:
    path = _state_file()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: asdict(svc) for name, svc in state.items()}, indent=2))
    tmp.replace(path)


def _start_one(name: str, workdir: Path, port: int) -> RunningService:
    service: MosquittoService | KafkaService | MinioService
    if name == "mosquitto":
        service = MosquittoService(workdir, port=port, autosave_interval=30)
    elif name == "kafka":
        service = KafkaService(workdir, port=port)
    elif name == "minio":
        service = MinioService(
            workdir, port=port, secret_key="fleetlearn-dev-secret", buckets=("fleetlearn",)
        )
    else:
        raise ServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
    service.start()
    pid = service.process.pid if service.process else None
    if pid is None:
        raise ServiceError(f"{name} started without a process id")
    return RunningService(name, pid, service.host, service.port, service.env())


DEFAULT_PORTS = {"mosquitto": 1883, "kafka": 9092, "minio": 9000}


def up(
    names: tuple[str, ...] = SERVICE_NAMES, *, default_ports: bool = True
) -> dict[str, RunningService]:
    """Start what is not already serving; return every recorded service."""
    state = load_state()
    for name in names:
        current = state.get(name)
        if current is not None and current.serving():
            continue
        port = DEFAULT_PORTS[name] if default_ports else 0
        if port and port_open("127.0.0.1", port):
            port = 0  # something else holds the usual port: take a free one
        state[name] = _start_one(name, state_dir() / name, port)
        _save_state(state)
    return state


def down(names: tuple[str, ...] = SERVICE_NAMES, timeout: float = 30.0) -> list[str]:
    """Stop the recorded services (SIGTERM, then SIGKILL); return the names stopped."""
    state = load_state()
    stopped = []
    for name in names:
        svc = state.pop(name, None)
        if svc is None:
            continue
        if svc.alive():
            _terminate(svc.pid, timeout)
            stopped.append(name)
    _save_state(state)
    return stopped


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
