"""A real edge agent in a subprocess, its config, and a watcher of what it sends."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bus.mqtt import MqttClient, MqttMessage, connect_mqtt
from bus.protocol import Message, decode_message

ROOT = Path(__file__).resolve().parents[2]


def eventually(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_config(path: Path, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(fields, default=str))))
    return path


class AgentProcess:
    """`fleetlearn edge run` as a device runs it (or another `fleetlearn` service command);
    its JSON log lines are kept for waits."""

    def __init__(self, config: Path, command: tuple[str, ...] = ("edge", "run")) -> None:
        self.config = config
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetlearn.cli", *command, "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.raw.append(line.rstrip())
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))

    def logged(self, msg: str) -> list[dict[str, Any]]:
        with self._lock:
            return [entry for entry in self.lines if entry.get("msg") == msg]

    def wait_logged(self, msg: str, timeout: float) -> dict[str, Any]:
        if not eventually(lambda: bool(self.logged(msg)), timeout):
            raise AssertionError(f"agent never logged {msg!r}; its log ends:\n{self.tail()}")
        return self.logged(msg)[0]

    def tail(self, lines: int = 25) -> str:
        with self._lock:
            return "\n".join(self.raw[-lines:])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


class Watcher:
    """Everything published under a prefix, decoded; by kind for the waits. The bytes as
    they arrived are kept beside each decoded message (what the bridge would carry on)."""

    def __init__(self, url: str, topic_filter: str, **options: Any) -> None:
        self.messages: list[tuple[str, Message]] = []
        self.payloads: list[bytes] = []
        self.undecodable: list[str] = []
        self._lock = threading.Lock()
        self.client: MqttClient = connect_mqtt(
            url,
            client_id=options.pop("client_id", unique("watch")),
            subscriptions={topic_filter: self._on},
            **options,
        )

    def _on(self, message: MqttMessage) -> None:
        try:
            decoded = decode_message(message.payload)
        except Exception:  # recorded: a test asserts there are none
            with self._lock:
                self.undecodable.append(message.topic)
            return
        with self._lock:
            self.messages.append((message.topic, decoded))
            self.payloads.append(bytes(message.payload))

    def raw(self, kind: str, topic_suffix: str = "") -> list[tuple[Message, bytes]]:
        with self._lock:
            return [
                (m, raw)
                for (t, m), raw in zip(self.messages, self.payloads, strict=True)
                if str(m.kind) == kind and t.endswith(topic_suffix)
            ]

    def of(self, kind: str, topic_suffix: str = "") -> list[Message]:
        with self._lock:
            return [m for t, m in self.messages if str(m.kind) == kind and t.endswith(topic_suffix)]

    def close(self) -> None:
        self.client.close()
