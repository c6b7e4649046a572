"""The device's sample buffer: SQLite in WAL mode, bounded by rows and by bytes.

Collectors append; the local trainer reads the newest window; the model manager holds back a
few samples for its health check. A process killed at any moment leaves the file readable and
loses at most the append in progress (each append is one transaction; WAL keeps earlier ones).
Row and byte totals are kept by triggers in the same transactions, so enforcing the limits
never scans the table, and the oldest samples go first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bus.errors import ConfigError, ValidationError
from edge_agent.sqlite_file import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    at REAL NOT NULL,
    features BLOB NOT NULL,
    label REAL
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, rows, bytes) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS samples_added AFTER INSERT ON samples BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + length(NEW.features) WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS samples_removed AFTER DELETE ON samples BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - length(OLD.features) WHERE id = 1;
END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(16))));
"""

MAX_FEATURES = 1 << 20  # one sample's vector; a larger one is a collector bug, not data
READ_CHUNK = 256  # rows per query when reading forward from a position


@dataclass(frozen=True)
class Sample:
    """One observation: a float32 feature vector, and a label where the sensor gives one."""

    features: npt.NDArray[np.float32]
    label: float | None = None
    at: float = 0.0
    stream: str = "default"


@dataclass(frozen=True)
class Window:
    """Samples as arrays for training: features (n, d) float32, labels (n,) float32 or None."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32] | None

    def __len__(self) -> int:
        return int(self.features.shape[0])


class SampleBuffer:
    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        synchronous: str = "NORMAL",
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ConfigError(f"buffer limits must be positive: rows {max_rows}, bytes {max_bytes}")
        if synchronous.upper() not in {"NORMAL", "FULL"}:
            raise ConfigError(f"buffer synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._db = open_wal(path, SCHEMA, synchronous=synchronous.upper())
        # A random id drawn when the file was created. Sequence numbers (`seq`) are positions
        # in this file only: a new file (the old one deleted) numbers its samples from 1 again.
        row = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        self.instance = str(row[0])

    # -- writing -----------------------------------------------------------------------------

    def append(self, sample: Sample) -> None:
        self.extend([sample])

    def extend(self, samples: Iterable[Sample]) -> int:
        """Append in one transaction, then drop the oldest beyond the limits; returns count."""
        rows = [_row(sample) for sample in samples]
        if not rows:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO samples (stream, at, features, label) VALUES (?, ?, ?, ?)", rows
            )
            self._enforce_limits()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return len(rows)

    def _enforce_limits(self) -> None:
        count, size = self.totals()
        excess_rows = count - self.max_rows
        while size > self.max_bytes or excess_rows > 0:
            mean = size / count if count else 1
            by_bytes = math.ceil((size - self.max_bytes) / mean) if size > self.max_bytes else 0
            drop = max(1, excess_rows, by_bytes)
            self._db.execute(
                "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                (drop,),
            )
            count, size = self.totals()
            excess_rows = count - self.max_rows
            if count == 0:
                return

    # -- reading -----------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """(rows, bytes of feature data) held now."""
        row = self._db.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
        return int(row[0]), int(row[1])

    def __len__(self) -> int:
        return self.totals()[0]

    def newest(self, limit: int, *, skip: int = 0, stream: str | None = None) -> list[Sample]:
        """Up to `limit` samples, oldest first, from the newest ones after skipping `skip`."""
        where, args = ("WHERE stream = ?", [stream]) if stream is not None else ("", [])
        rows = self._db.execute(
            f"SELECT stream, at, features, label FROM samples {where} "
            "ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*args, limit, skip],
        ).fetchall()
        return [_sample(row) for row in reversed(rows)]

    def last_seq(self) -> int:
        """The newest sequence number ever given (0 for none); it never goes back, even when
        retention has emptied the table (AUTOINCREMENT keeps it in sqlite_sequence)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'samples'").fetchone()
        return 0 if row is None else int(row[0])

    def after(self, seq: int, *, stream: str) -> Iterator[tuple[int, Sample]]:
        """The samples of `stream` after position `seq`, oldest first, read lazily in chunks;
        stop iterating whenever enough were read."""
        while True:
            rows = self._db.execute(
                "SELECT seq, stream, at, features, label FROM samples "
                "WHERE seq > ? AND stream = ? ORDER BY seq LIMIT ?",
                (seq, stream, READ_CHUNK),
            ).fetchall()
            for row in rows:
                yield int(row[0]), _sample(row[1:])
            if len(rows) < READ_CHUNK:
                return
            seq = int(rows[-1][0])

    def streams_after(self, seq: int) -> set[str]:
        """The streams with samples after position `seq`."""
        rows = self._db.execute("SELECT DISTINCT stream FROM samples WHERE seq > ?", (seq,))
        return {str(row[0]) for row in rows}

    def window(self, limit: int, *, skip: int = 0, stream: str | None = None) -> Window:
        """The newest samples as arrays; all must have the same width (one model's input)."""
        return to_window(self.newest(limit, skip=skip, stream=stream))

    def close(self) -> None:
        self._db.close()


def to_window(samples: Sequence[Sample]) -> Window:
    if not samples:
        return Window(np.zeros((0, 0), np.float32), None)
    widths = {int(s.features.shape[0]) for s in samples}
    if len(widths) > 1:
        raise ValidationError(f"samples of different widths {sorted(widths)}", where="buffer")
    features = np.stack([s.features for s in samples]).astype(np.float32, copy=False)
    labels = [s.label for s in samples]
    if all(label is None for label in labels):
        return Window(features, None)
    if any(label is None for label in labels):
        raise ValidationError("some samples have labels and some do not", where="buffer")
    return Window(features, np.asarray(labels, dtype=np.float32))


def _row(sample: Sample) -> tuple[str, float, bytes, float | None]:
    features = np.asarray(sample.features)
    if features.ndim != 1 or not 1 <= features.shape[0] <= MAX_FEATURES:
        raise ValidationError(
            f"features must be a vector of 1 to {MAX_FEATURES} values, got shape {features.shape}",
            where="sample.features",
        )
    if not np.issubdtype(features.dtype, np.number) or np.issubdtype(
        features.dtype, np.complexfloating
    ):
        raise ValidationError(
            f"features must be real numbers, got {features.dtype}", where="sample.features"
        )
    values = features.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValidationError("features must be finite", where="sample.features")
    label = sample.label
    if label is not None and not math.isfinite(label):
        raise ValidationError(f"label must be finite, got {label}", where="sample.label")
    at = sample.at or time.time()
    return sample.stream, at, values.tobytes(), None if label is None else float(label)


def _sample(row: tuple[str, float, bytes, float | None]) -> Sample:
    stream, at, blob, label = row
    return Sample(np.frombuffer(blob, dtype=np.float32), label, at, stream)
