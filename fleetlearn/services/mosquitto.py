"""A real Mosquitto broker on a loopback port, configured like the one we ship in infra/."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path

from fleetlearn.services.base import ServiceProcess, free_port
from fleetlearn.services.install import mosquitto_binary

# Persistence on, and no queue limits: Mosquitto's defaults (1000 queued messages per session)
# drop messages for an offline device or a stopped bridge. autosave_interval is short because
# PUBACK is not disk: a SIGKILLed broker loses what it queued since the last save.
# `user` keeps the broker running as whoever started it: as root, Mosquitto would otherwise
# switch to the `mosquitto` user and could not read its own data and password files.
CONFIG_TEMPLATE = """\
user {user}
listener {port} {host}
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval {autosave}
autosave_on_changes false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
persistent_client_expiration 7d
log_dest stdout
log_type error
log_type warning
log_type notice
"""


@dataclass
class MosquittoService:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    autosave_interval: int = 1
    extra_config: str = ""
    process: ServiceProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"FLEETLEARN_MQTT_URL": self.url}

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        text = CONFIG_TEMPLATE.format(
            port=self.port,
            host=self.host,
            data=data,
            autosave=self.autosave_interval,
            user=getpass.getuser(),
        )
        config.write_text(text + self.extra_config)
        return config

    def start(self, timeout: float = 20.0) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        config = self._write_config()
        self.process = ServiceProcess(
            "mosquitto",
            [str(mosquitto_binary()), "-c", str(config)],
            self.workdir / "mosquitto.log",
        )
        self.process.start()
        self.process.wait_ready(self.host, self.port, timeout)

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def kill(self) -> None:
        if self.process:
            self.process.kill()

    def restart(self, timeout: float = 20.0) -> None:
        """Start again on the same port and data directory (after stop or kill)."""
        self.stop()
        self.start(timeout)
