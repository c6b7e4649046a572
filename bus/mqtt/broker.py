"""An MQTT broker for one machine: Mosquitto as a child process when it is installed, otherwise
amqtt inside this process (MQTT 3.1.1 only; install it with the `embedded` extra).
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from bus.errors import ConfigError, ConnectError

Prefer = Literal["auto", "mosquitto", "amqtt"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_listening(host: str, port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ConnectError(f"the embedded broker on {host}:{port} exited while starting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ConnectError(f"the embedded broker on {host}:{port} did not listen within {timeout} s")


class EmbeddedBroker:
    """`with EmbeddedBroker() as broker: connect_mqtt(broker.url, ...)`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        prefer: Prefer = "auto",
        data_dir: Path | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        """`users` (name -> password) turns anonymous access off: only they may connect."""
        self.host = host
        self.users = dict(users or {})
        self.port = port or _free_port(host)
        # Debian installs it in sbin, which is not always on a user's PATH.
        mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
        if prefer == "mosquitto" and mosquitto is None:
            raise ConfigError(
                "prefer='mosquitto' but no mosquitto on PATH (apt-get install mosquitto)"
            )
        self.kind: Literal["mosquitto", "amqtt"] = (
            "mosquitto" if prefer != "amqtt" and mosquitto else "amqtt"
        )
        self._mosquitto = mosquitto
        self._data_dir = data_dir
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """amqtt speaks MQTT 3.1.1 only, so its URL says so."""
        suffix = "?protocol=311" if self.kind == "amqtt" else ""
        return f"mqtt://{self.host}:{self.port}{suffix}"

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> None:
        if self.kind == "mosquitto":
            self._start_mosquitto(timeout)
        else:
            self._start_amqtt(timeout)

    def _directory(self) -> Path:
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            return self._data_dir
        self._temp = tempfile.TemporaryDirectory(prefix="fleetlearn-broker-")
        return Path(self._temp.name)

    def _start_mosquitto(self, timeout: float) -> None:
        directory = self._directory()
        config = directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"user {getpass.getuser()}",  # as root, stay root: our files, our dirs
                    f"listener {self.port} {self.host}",
                    *self._mosquitto_auth(directory),
                    "persistence true",
                    f"persistence_location {directory}/",
                    "autosave_interval 1",  # a killed broker loses at most a second of queue
                    "max_queued_messages 0",
                    "max_inflight_messages 0",
                    "persistent_client_expiration 1d",
                    "",
                ]
            )
        )
        assert self._mosquitto is not None
        self._process = subprocess.Popen(
            [self._mosquitto, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "mosquitto.log").open("ab"),
        )
        process = self._process
        _wait_listening(self.host, self.port, timeout, alive=lambda: process.poll() is None)

    def _mosquitto_auth(self, directory: Path) -> list[str]:
        if not self.users:
            return ["allow_anonymous true"]
        passwords = directory / "passwd"
        passwords.write_text("")
        passwords.chmod(0o600)
        tool = shutil.which("mosquitto_passwd") or shutil.which(
            "mosquitto_passwd", path="/usr/bin:/usr/sbin"
        )
        if tool is None:
            raise ConfigError("users= needs mosquitto_passwd, which Mosquitto installs beside it")
        for name, password in self.users.items():
            done = subprocess.run(
                [tool, "-b", str(passwords), name, password], capture_output=True, check=False
            )
            if done.returncode != 0:
                raise ConfigError(
                    f"mosquitto_passwd refused user {name!r}: {done.stderr.decode().strip()}"
                )
        return ["allow_anonymous false", f"password_file {passwords}"]

    def _amqtt_auth(self) -> dict[str, Any]:
        if not self.users:
            return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        hasher = PasswordHash((Argon2Hasher(),))
        passwords = self._directory() / "passwd"
        passwords.write_text(
            "".join(f"{name}:{hasher.hash(pw)}\n" for name, pw in self.users.items())
        )
        return {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwords)}}

    def _start_amqtt(self, timeout: float) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise ConfigError(
                "no mosquitto on PATH and amqtt is not installed: "
                "pip install 'fleetlearn[embedded]'"
            ) from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": self._amqtt_auth(),
        }
        ready = threading.Event()
        failure: list[Exception] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except Exception as exc:  # noqa: BLE001 - handed to the starting thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise ConnectError(
                f"amqtt could not start on {self.host}:{self.port}: {failure[0]}"
            ) from failure[0]
        _wait_listening(self.host, self.port, timeout)

    def kill(self) -> None:
        """SIGKILL the Mosquitto child (what a crash looks like); amqtt is simply stopped."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
        else:
            self.stop()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None
        if self._loop is not None and self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(10)
                self._loop = None
                self._broker = None
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None
