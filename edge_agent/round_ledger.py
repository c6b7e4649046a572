"""Which rounds this device already answered, kept on disk.

Round announcements are retained and sessions persistent, so after a restart the same round
arrives again; without this record the device would train it twice and send two updates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bus.errors import ValidationError
from bus.store.file import fsync_dir

KEEP = 256  # rounds remembered; far more than can be open at once


class RoundLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: list[str] = []
        if path.exists():
            try:
                data = json.loads(path.read_text())
                self._done = [str(r) for r in data["done"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValidationError(
                    f"unreadable round ledger ({exc}); delete it to start afresh", where=str(path)
                ) from exc

    def __contains__(self, round_id: object) -> bool:
        return round_id in self._done

    def mark(self, round_id: str) -> None:
        if round_id in self._done:
            return
        self._done = [*self._done, round_id][-KEEP:]
        staging = self.path.with_name(self.path.name + ".tmp")
        with open(staging, "w") as handle:
            json.dump({"done": self._done}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, self.path)
        fsync_dir(self.path.parent)
