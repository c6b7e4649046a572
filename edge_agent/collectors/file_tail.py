"""Tail a CSV or JSON-lines file that another program appends to, as `tail -F` would.

Only complete lines are read: a partial last line waits for its newline. A file that does not
exist yet is waited for; one that shrinks (truncated) is read again from its start; one whose
path now names another inode (rotated) is read to its end, then the new one from its start.
Where it got to (inode, byte offset) is saved after every emitted batch, so a restart neither
skips a line nor writes one twice, except the batch that was being written when it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.errors import ValidationError
from edge_agent.buffer import Sample
from edge_agent.collectors.base import MAX_BATCH, Emit, PositionFile
from edge_agent.collectors.parse import Tally, features, make_sample, number
from edge_agent.config import FileCollectorConfig

log = logging.getLogger(__name__)

READ_SIZE = 4 << 20  # bytes read at once; a longer line is rejected and skipped


@dataclass(frozen=True)
class _Layout:
    """Where a CSV file's features and label are, from its header (or why it cannot be used)."""

    width: int = 0
    columns: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    label: int | None = None
    problem: str | None = None


class FileCollector:
    def __init__(self, config: FileCollectorConfig, *, state_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self._position = PositionFile(state_dir, config.name)
        self._rejects = Tally(log, "collector rejected a line", config.name)
        self._unopenable = Tally(log, "collector cannot open its file", config.name)
        self._fd: int | None = None
        self._inode = 0
        self._offset = 0  # bytes consumed: always at the start of a line
        self._line = 0  # lines consumed, for messages
        self._skipping = False  # inside an over-long line, up to its newline
        self._layout: _Layout | None = None  # CSV: None until the header is read
        # JSON lines without `features`: the first accepted object's keys, so order is fixed.
        self._keys: list[str] | None = list(config.features) if config.features else None

    @property
    def rejected(self) -> int:
        """Lines skipped as unusable since this collector was built."""
        return self._rejects.count

    def run(self, emit: Emit, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.poll(emit, stop)
                stop.wait(self.config.poll_s)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self, emit: Emit, stop: threading.Event | None = None) -> int:
        """Read the complete lines the file holds now; returns how many samples were emitted."""
        if self._fd is None and not self._open(resume=True):
            return 0
        emitted = self._read(emit, stop)
        if self._replaced():
            log.info("collector file rotated", extra={"collector": self.name, "line": self._line})
            self.close()
            if self._open(resume=False):
                emitted += self._read(emit, stop)
        return emitted

    # -- following the file -------------------------------------------------------------------

    def _open(self, *, resume: bool) -> bool:
        try:
            fd = os.open(self.config.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:  # e.g. not readable yet: wait as for a missing file
            self._unopenable.add(str(self.config.path), str(exc))
            return False
        status = os.fstat(fd)
        size = status.st_size
        self._fd, self._inode = fd, status.st_ino
        offset = line = 0
        saved = self._position.load() if resume else None
        if saved is not None:
            if saved.get("inode") == self._inode and _count(saved, "offset") <= size:
                offset, line = _count(saved, "offset"), _count(saved, "line")
            # otherwise rotated or truncated while we were away: all of this file is new
        elif resume and not self.config.from_start:
            offset, line = _end_of_last_line(fd, size)
        self._start_at(offset, line)
        return True

    def _replaced(self) -> bool:
        try:
            return os.stat(self.config.path).st_ino != self._inode
        except OSError:
            return False  # gone, no successor yet: keep reading the old one

    def _start_at(self, offset: int, line: int) -> None:
        self._offset, self._line, self._skipping, self._layout = offset, line, False, None
        if self.config.format == "csv" and offset > 0:
            self._read_header()
        self._save()

    def _save(self) -> None:
        self._position.save({"inode": self._inode, "offset": self._offset, "line": self._line})

    def _read(self, emit: Emit, stop: threading.Event | None) -> int:
        assert self._fd is not None
        if os.fstat(self._fd).st_size < self._offset:
            log.info("collector file truncated", extra={"collector": self.name})
            self._start_at(0, 0)
        emitted = 0
        while stop is None or not stop.is_set():
            data = os.pread(self._fd, READ_SIZE, self._offset)
            if self._skipping:
                if self._skip(data):
                    continue  # the long line ended: what follows it may be complete lines
            elif (end := data.rfind(b"\n") + 1) > 0:
                emitted += self._consume(data[:end], emit)
            elif len(data) == READ_SIZE:
                self._rejects.add(self._where(self._line + 1), f"longer than {READ_SIZE} bytes")
                self._skipping = True
                self._commit(self._offset + len(data), self._line)
            if len(data) < READ_SIZE:
                break  # all read, but a partial last line, which waits for its newline
        return emitted

    def _skip(self, data: bytes) -> bool:
        """Drop the rest of an over-long line; True once its newline was reached."""
        end = data.find(b"\n")
        if end < 0:
            self._commit(self._offset + len(data), self._line)
            return False
        self._skipping = False
        self._commit(self._offset + end + 1, self._line + 1)
        return True

    def _commit(self, offset: int, line: int) -> None:
        self._offset, self._line = offset, line
        self._save()

    def _consume(self, data: bytes, emit: Emit) -> int:
        """Parse complete lines; the position moves only past batches that `emit` took."""
        at = time.time()
        batch: list[Sample] = []
        emitted = 0
        offset, line = self._offset, self._line
        for raw in data.split(b"\n")[:-1]:
            offset += len(raw) + 1
            line += 1
            sample = self._parse(raw, line, at)
            if sample is not None:
                batch.append(sample)
            if len(batch) == MAX_BATCH:
                emit(batch)
                emitted += len(batch)
                batch = []
                self._commit(offset, line)
        if batch:
            emit(batch)
            emitted += len(batch)
        self._commit(offset, line)
        return emitted

    # -- parsing -------------------------------------------------------------------------------

    def _where(self, line: int) -> str:
        return f"{self.config.path} line {line}"

    def _parse(self, raw: bytes, line: int, at: float) -> Sample | None:
        try:
            text = raw.decode("utf-8").rstrip("\r")
            if not text.strip():
                return None  # a blank line carries nothing
            if self.config.format == "jsonl":
                return self._json_sample(text, at)
            if self._layout is None:
                self._set_header(text)
                return None
            return self._csv_sample(text, at)
        except UnicodeDecodeError as exc:
            self._rejects.add(self._where(line), f"not UTF-8: {exc}")
        except ValidationError as exc:
            self._rejects.add(self._where(line), str(exc))
        return None

    def _read_header(self) -> None:
        assert self._fd is not None
        for raw in os.pread(self._fd, READ_SIZE, 0).split(b"\n")[:-1]:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            if text.strip():
                self._set_header(text)
                return
        self._layout = _Layout(problem=f"{self.config.path} has no header line")

    def _set_header(self, text: str) -> None:
        columns = [c.strip() for c in _csv_row(text)]
        label = self.config.label
        names = self.config.features or [c for c in columns if c != label]
        wanted = [*names, *([label] if label is not None else [])]
        missing = [c for c in wanted if c not in columns]
        if missing or not names:
            problem = (
                f"the header of {self.config.path} lacks column(s) {missing} (it has {columns})"
                if missing
                else f"the header of {self.config.path} names no feature columns"
            )
            log.error(
                "collector cannot use its file", extra={"collector": self.name, "why": problem}
            )
            self._layout = _Layout(problem=problem)
            return
        self._layout = _Layout(
            width=len(columns),
            columns=tuple(columns.index(c) for c in names),
            names=tuple(f"column {c!r}" for c in names),
            label=None if label is None else columns.index(label),
        )

    def _csv_sample(self, text: str, at: float) -> Sample:
        layout = self._layout
        assert layout is not None
        if layout.problem is not None:
            raise ValidationError(layout.problem)
        row = _csv_row(text)
        if len(row) != layout.width:
            raise ValidationError(f"{len(row)} columns where the header has {layout.width}")
        values = features([row[i] for i in layout.columns], layout.names)
        label = None
        if layout.label is not None:
            label = number(row[layout.label], f"column {self.config.label!r}")
        return make_sample(values, label, at=at, stream=self.config.stream)

    def _json_sample(self, text: str, at: float) -> Sample:
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"invalid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ValidationError(f"expected a JSON object, got {type(record).__name__}")
        label_key = self.config.label
        keys = self._keys or [k for k in record if k != label_key]
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValidationError(f"no key(s) {missing} (features are {keys})")
        values, names = _flatten(record, keys)
        checked = features(values, names)
        label = None
        if label_key is not None:
            if label_key not in record:
                raise ValidationError(f"no label key {label_key!r}")
            label = number(record[label_key], f"key {label_key!r}")
        self._keys = keys
        return make_sample(checked, label, at=at, stream=self.config.stream)


def _csv_row(text: str) -> list[str]:
    try:
        return next(csv.reader([text]))
    except csv.Error as exc:
        raise ValidationError(f"bad CSV: {exc}") from None


def _flatten(record: dict[str, Any], keys: list[str]) -> tuple[list[Any], list[str]]:
    """Values of `keys` in order; a key holding a list contributes each of its items."""
    values: list[Any] = []
    names: list[str] = []
    for key in keys:
        value = record[key]
        if isinstance(value, list):
            values.extend(value)
            names.extend(f"key {key!r}[{i}]" for i in range(len(value)))
        else:
            values.append(value)
            names.append(f"key {key!r}")
    return values, names


def _count(saved: dict[str, Any], key: str) -> int:
    value = saved.get(key)
    return value if isinstance(value, int) and value >= 0 else 0


def _end_of_last_line(fd: int, size: int) -> tuple[int, int]:
    """(offset just past the last newline, lines before it): where `from_start=False` begins."""
    offset = lines = position = 0
    while position < size:
        chunk = os.pread(fd, min(READ_SIZE, size - position), position)
        if not chunk:
            break
        if (count := chunk.count(b"\n")) > 0:
            lines += count
            offset = position + chunk.rfind(b"\n") + 1
        position += len(chunk)
    return offset, lines
