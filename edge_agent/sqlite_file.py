"""The device's SQLite files, opened one way: WAL, our own transactions, a chosen sync level."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_wal(path: Path, schema: str, *, synchronous: str) -> sqlite3.Connection:
    """Open (creating) a WAL database with `schema` applied.

    `isolation_level=None` leaves transactions to the caller (BEGIN IMMEDIATE ... COMMIT).
    NORMAL: a killed process loses nothing committed; a power cut may lose the newest commits
    but never corrupts the file. FULL also survives power cuts, at an fsync per commit.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db
