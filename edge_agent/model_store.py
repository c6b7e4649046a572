"""Installed models on the device: one directory per version, switched atomically.

Layout under `root/{model}/`: `v{version}/` holds a verified release's files and its
`release.json`; `current` and `previous` are symlinks replaced with `os.replace`, so a power
cut leaves either the old or the new model active, never half of one. Files are fsynced
before the switch. Rolling back points `current` at `previous` again.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ValidationError
from bus.protocol import ReleaseManifest
from bus.store.file import fsync_dir


@dataclass(frozen=True)
class Installed:
    model: str
    version: int
    directory: Path
    manifest: ReleaseManifest

    def has(self, fmt: str) -> bool:
        return any(
            f.format == fmt and (self.directory / f.name).is_file() for f in self.manifest.files
        )

    def file(self, fmt: str) -> Path:
        """The installed file of a format ("onnx" or "tflite"), int8 preferred on a device."""
        candidates = sorted(
            (
                f
                for f in self.manifest.files
                if f.format == fmt and (self.directory / f.name).is_file()
            ),
            key=lambda f: f.quantization != "int8",
        )
        if not candidates:
            raise ValidationError(f"release v{self.version} has no {fmt} file", where="release")
        return self.directory / candidates[0].name


class ModelStore:
    def __init__(self, root: Path, *, keep: int = 3) -> None:
        self.root = root
        self.keep = max(2, keep)
        root.mkdir(parents=True, exist_ok=True)

    def install(self, manifest: ReleaseManifest, files: Mapping[str, bytes]) -> Installed:
        """Write a verified release next to the others (not yet active)."""
        model_dir = self.root / manifest.model
        model_dir.mkdir(parents=True, exist_ok=True)
        target = model_dir / f"v{manifest.version}"
        staging = model_dir / f".staging-{manifest.version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for spec in manifest.files:
                if spec.name in files:  # a device fetches only the files it uses
                    _write_synced(staging / spec.name, files[spec.name])
            _write_synced(
                staging / "release.json", manifest.model_dump_json(by_alias=True).encode()
            )
            fsync_dir(staging)
            if target.exists():  # the same version again: replace what may be a broken copy
                shutil.rmtree(target)
            os.replace(staging, target)
            fsync_dir(model_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self._load(manifest.model, target)

    def activate(self, installed: Installed) -> None:
        """Make `installed` current; the version it replaces becomes `previous`."""
        model_dir = self.root / installed.model
        current = self.active(installed.model)
        if current is not None and current.version != installed.version:
            _point(model_dir / "previous", current.directory.name)
        _point(model_dir / "current", installed.directory.name)
        self._prune(installed.model)

    def rollback(self, model: str) -> Installed | None:
        """Point `current` back at `previous`; returns the model now active (None if none)."""
        model_dir = self.root / model
        previous = self._link(model, "previous")
        if previous is None:
            (model_dir / "current").unlink(missing_ok=True)
            return None
        _point(model_dir / "current", previous.directory.name)
        (model_dir / "previous").unlink(missing_ok=True)
        return previous

    def installed(self, model: str, version: int) -> Installed | None:
        """A version on disk, active or not (a round's base may be the previous one)."""
        directory = self.root / model / f"v{version}"
        if not (directory / "release.json").is_file():
            return None
        return self._load(model, directory)

    def active(self, model: str) -> Installed | None:
        return self._link(model, "current")

    def versions(self, model: str) -> list[int]:
        model_dir = self.root / model
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name[1:])
            for p in model_dir.iterdir()
            if p.is_dir() and not p.is_symlink() and p.name[1:].isdigit() and p.name[0] == "v"
        )

    def _link(self, model: str, name: str) -> Installed | None:
        link = self.root / model / name
        if not link.is_symlink():
            return None
        target = self.root / model / os.readlink(link)
        if not (target / "release.json").is_file():
            return None
        return self._load(model, target)

    def _load(self, model: str, directory: Path) -> Installed:
        manifest = ReleaseManifest.model_validate_json((directory / "release.json").read_bytes())
        return Installed(model, manifest.version, directory, manifest)

    def _prune(self, model: str) -> None:
        """Keep the newest `keep` versions, and always current and previous."""
        held = {
            i.version for i in (self.active(model), self._link(model, "previous")) if i is not None
        }
        versions = self.versions(model)
        for version in versions[: max(0, len(versions) - self.keep)]:
            if version not in held:
                shutil.rmtree(self.root / model / f"v{version}", ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _point(link: Path, target: str) -> None:
    """Replace a symlink atomically: a new link beside it, renamed over it."""
    staging = link.with_name(f".{link.name}-{uuid.uuid4().hex[:8]}")
    os.symlink(target, staging)
    os.replace(staging, link)
    fsync_dir(link.parent)
