"""What every collector is: a blocking `run(emit, stop)`, plus the small position file they keep.

A collector turns one source (a file, an MQTT topic, a data set, a plugin) into `Sample`s and
hands them to `emit` in batches; the agent runs each collector's `run` in its own thread and
sets `stop` to end it. Bad input data is counted and logged, never raised. An exception from
`emit` (the buffer could not write) does propagate: a collector marks input consumed only after
`emit` returned, so the caller may simply start it again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bus.errors import ConfigError
from edge_agent.buffer import Sample

log = logging.getLogger(__name__)

Emit = Callable[[Sequence[Sample]], None]
"""Writes one batch to the buffer (one transaction); may raise."""

MAX_BATCH = 500  # samples per emit: one buffer transaction stays short on an SD card


class Collector(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Block until `stop` is set (or a finite source ends), emitting batches of samples."""
        ...


def check_name(name: str) -> str:
    """The name becomes a file name in the state directory, so it must be a plain one."""
    if not name or name in {".", ".."} or Path(name).name != name or "\x00" in name:
        raise ConfigError(f"collector name {name!r} must be a plain file name (no '/')")
    return name


class PositionFile:
    """A small JSON document saved atomically (temp file + rename) under `state_dir/{name}.pos`.

    Not fsynced: like the buffer's NORMAL mode, a power cut may lose the last moment; a
    position that comes back older than the buffer re-reads a batch, it never skips one.
    """

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = state_dir / f"{check_name(name)}.pos"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning(
                "collector position unreadable; starting afresh",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return None
        return data if isinstance(data, dict) else None

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f"{self.path.name}.tmp")
        temp.write_text(json.dumps(data))
        os.replace(temp, self.path)
