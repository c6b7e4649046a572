"""Follows the fleet's release manifests: fetch, verify, install, health-check, switch or roll back.

The device keeps serving its current model through all of it: a new one replaces it only after
its signature, sizes and hashes check out and it scored the device's own held-back samples with
finite outputs. Anything else leaves the old model active and is remembered as the rejected
release, which the status heartbeat reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bus.errors import ProtocolError, ValidationError
from bus.protocol import RejectedRelease, ReleaseManifest, decode_message
from edge_agent.inference import Predictor, RuntimeChoice, health_check
from edge_agent.model_store import Installed, ModelStore
from edge_agent.releases import ReleaseRejected, fetch, verify_release

log = logging.getLogger(__name__)

HeldBack = Callable[[int], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Outcome:
    action: str  # "installed", "rejected", "ignored", "rolled back"
    version: int | None
    reason: str = ""


def _no_samples(count: int) -> npt.NDArray[np.float32]:
    return np.zeros((0, 0), np.float32)


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        keys: dict[str, Ed25519PublicKey],
        *,
        model: str,
        runtime: RuntimeChoice = "auto",
        train: bool = False,
        held_back: HeldBack = _no_samples,
        health_samples: int = 32,
        download_timeout_s: float = 60.0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.model = model
        self.runtime = runtime
        self.train = train
        self.held_back = held_back
        self.health_samples = health_samples
        self.download_timeout_s = download_timeout_s
        self.rejected: RejectedRelease | None = None
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None
        active = store.active(model)
        if active is not None:
            self._predictor = self._load_or_roll_back(active)

    @property
    def active(self) -> Installed | None:
        predictor = self._predictor
        return None if predictor is None else predictor.installed

    @property
    def predictor(self) -> Predictor | None:
        return self._predictor

    def handle(self, payload: bytes) -> Outcome:
        """One message from the release topic; never raises for what the network sent."""
        try:
            message = decode_message(payload)
        except ProtocolError as exc:
            return self._reject(None, f"malformed release message: {exc}")
        manifest = message.envelope
        if not isinstance(manifest, ReleaseManifest):
            return self._reject(None, f"a {manifest.kind} message on the release topic")
        if manifest.model != self.model:
            return Outcome("ignored", manifest.version, f"release of {manifest.model!r}")
        active = self.active
        if active is not None and manifest.version <= active.version:
            return Outcome("ignored", manifest.version, f"v{active.version} is already active")
        inline = {name: bytes(array.data) for name, array in message.tensors.items()}
        return self.install(manifest, inline)

    def install(self, manifest: ReleaseManifest, inline: dict[str, bytes]) -> Outcome:
        with self._lock:
            try:
                files = self._gather(manifest, inline)
                verify_release(manifest, files, self.keys, required=files)
            except ReleaseRejected as exc:
                return self._reject(manifest.version, str(exc))
            installed = self.store.install(manifest, files)
            predictor, reason = self._checked(installed)
            if predictor is None:
                return self._reject(manifest.version, f"health check failed: {reason}")
            self.store.activate(installed)
            self._predictor = predictor
            log.info(
                "model installed",
                extra={
                    "model": self.model,
                    "version": manifest.version,
                    "runtime": predictor.runtime,
                },
            )
            return Outcome("installed", manifest.version)

    def rollback(self) -> Outcome:
        """Back to the previous version (a `rollback` command, or a model that went bad)."""
        with self._lock:
            before = self.active
            previous = self.store.rollback(self.model)
            if previous is None:
                return Outcome("ignored", None, "no previous version to roll back to")
            predictor, reason = self._checked(previous)
            if predictor is None:
                if before is not None:
                    self.store.activate(before)
                return Outcome("ignored", previous.version, f"previous version unfit: {reason}")
            self._predictor = predictor
            log.warning(
                "model rolled back",
                extra={"model": self.model, "version": previous.version},
            )
            return Outcome("rolled back", previous.version)

    def _wanted(self, manifest: ReleaseManifest) -> list[str]:
        """The files this device uses: one per runtime format it may run, weights if it trains."""
        names = []
        for fmt in ("onnx", "tflite"):
            candidates = sorted(
                (f for f in manifest.files if f.format == fmt),
                key=lambda f: f.quantization != "int8",
            )
            if candidates and (self.runtime in ("auto", fmt)):
                names.append(candidates[0].name)
        if self.train:
            names += [f.name for f in manifest.files if f.format == "weights"]
        return names

    def _gather(self, manifest: ReleaseManifest, inline: dict[str, bytes]) -> dict[str, bytes]:
        wanted = self._wanted(manifest)
        if not any(f.format in ("onnx", "tflite") for f in manifest.files if f.name in wanted):
            raise ReleaseRejected(f"no file for runtime {self.runtime!r}", where="release.files")
        specs = {f.name: f for f in manifest.files}
        files = {}
        for name in wanted:
            spec = specs[name]
            if spec.url is None:
                if name not in inline:
                    raise ReleaseRejected("inline file missing from the payload", where=name)
                files[name] = inline[name]
            else:
                files[name] = fetch(spec, timeout=self.download_timeout_s)
        return files

    def _checked(self, installed: Installed) -> tuple[Predictor | None, str]:
        try:
            predictor = Predictor(installed, self.runtime)
        except ValidationError as exc:
            return None, str(exc)
        samples = self.held_back(self.health_samples)
        if samples.size and samples.shape[1] != predictor.width:
            return None, (
                f"model takes {predictor.width} features, the device's samples have "
                f"{samples.shape[1]}"
            )
        reason = health_check(predictor, samples)
        return (None, reason) if reason else (predictor, "")

    def _load_or_roll_back(self, active: Installed) -> Predictor | None:
        """At start: a current model that no longer loads (a damaged disk) falls back."""
        predictor, reason = self._checked(active)
        if predictor is not None:
            return predictor
        log.error(
            "active model unfit at start; rolling back",
            extra={"model": self.model, "version": active.version, "reason": reason},
        )
        self.rejected = RejectedRelease(version=active.version, reason=reason[:512])
        previous = self.store.rollback(self.model)
        if previous is None:
            return None
        fallback, _ = self._checked(previous)
        return fallback

    def _reject(self, version: int | None, reason: str) -> Outcome:
        log.warning(
            "release rejected", extra={"model": self.model, "version": version, "reason": reason}
        )
        if version is not None:
            self.rejected = RejectedRelease(version=version, reason=reason[:512] or "rejected")
        return Outcome("rejected", version, reason)


def weights_file(installed: Installed) -> Path | None:
    """The release's training weights, where the device fetched them."""
    return installed.file("weights") if installed.has("weights") else None
