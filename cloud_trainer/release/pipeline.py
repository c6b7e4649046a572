"""Turn aggregated parameters into a release devices install: check, export, sign, store, publish.

One `release` call, in this order, so a failure at any step leaves devices untouched:

1. build the module and load the parameters (strict: names, shapes, dtypes, finite values);
2. evaluate on the held-out rows of the configured data set split (always the same rows);
3. export ONNX (and TFLite where its extra and a runtime are installed) with parity and
   accuracy enforced against torch in every runtime, and write the weights file;
4. sign the manifest (files up to `inline_max_bytes` ride inline, larger ones by URL);
5. upload every file, `manifest.json` (the export's parity reports) and `release.json`
   (the signed manifest) to `models/{model}/v{version:06d}/`;
6. record the version in the registry (record first, then `latest.json`);
7. publish the release message to Kafka (key = model name) and wait for its delivery report.

A parity failure stops at step 3: nothing is uploaded, recorded or published. Releasing the
same version again (a trainer restarted between steps 5 and 7) rewrites the same keys and
publishes again, which devices take as the same retained release.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from bus.errors import ConfigError, PublishError, ValidationError
from bus.log import DeliveryReport, Producer
from bus.log.base import DEFAULT_MAX_MESSAGE_BYTES
from bus.protocol import ModelFile, ReleaseManifest, signing_bytes
from bus.store import ObjectStore
from bus.topics import KAFKA_RELEASES, check_fleet, check_model_name
from cloud_trainer.release.evaluate import evaluate
from cloud_trainer.release.keys import check_key_id
from cloud_trainer.release.registry import Lineage, Registry, RegistryEntry, object_key
from models.datasets import Holdout
from models.export.pipeline import ExportRequest, Format, export_checked
from models.export.runtimes import installed_tflite_runtimes
from models.params import set_parameters
from models.registry import get_spec
from models.release import ONNX_NAME, WEIGHTS_NAME, encode_release
from models.workflow import Split, WeightsFile, prepare_data, save_weights

log = logging.getLogger(__name__)

RELEASE_JSON = "release.json"
EXPORT_MANIFEST_JSON = "manifest.json"
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # S3's limit for a SigV4 presigned URL
FILE_STEM = ONNX_NAME.removesuffix(".onnx")  # model.onnx, model.tflite, model.int8.onnx, …


@dataclass(frozen=True)
class ReleaseConfig:
    """What the trainer releases, and how the files reach devices."""

    fleet: str
    """The fleet the manifest is signed for."""
    model: str
    """The name devices follow: release topic, Kafka key, object keys, registry."""
    architecture: str
    """A `models.registry` architecture name (logreg, mlp, cnn, cnn1d, textclf)."""
    architecture_config: dict[str, Any]
    """Its config as plain values, the same the round announcement carries."""
    dataset: str
    """The data set whose held-out split scores and parity-checks every release."""
    split_seed: int
    """Seed of that split: the same held-out rows for every version, so metrics compare."""
    holdout: Holdout | None = None
    """What the split holds out (subjects, recordings, rows); None = subjects where the data
    has them, else stratified rows."""
    inline_max_bytes: int = 256 * 1024
    """Files up to this size ride inline in the release message; larger ones go by URL."""
    url_expiry_s: int = MAX_URL_EXPIRY_S
    """Lifetime of presigned URLs (S3). The release is retained, so keep it long."""
    tflite: bool | None = None
    """Export TFLite too; None = when the `tflite` extra and a TFLite runtime are installed."""
    int8: bool = False
    """Also export static int8 files (slower; devices prefer them where present)."""
    flush_timeout_s: float = 30.0
    """How long to wait for the log to confirm the release message."""
    releases_topic: str = KAFKA_RELEASES
    """The log topic releases are published to (the bridge carries them to devices)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """The log's largest record (Kafka's default); a bigger release fails before any write."""

    def __post_init__(self) -> None:
        check_fleet(self.fleet)
        check_model_name(self.model)
        get_spec(self.architecture).parse(self.architecture_config)
        if self.inline_max_bytes < 0:
            raise ConfigError(f"inline_max_bytes must be ≥ 0, got {self.inline_max_bytes}")
        if not 1 <= self.url_expiry_s <= MAX_URL_EXPIRY_S:
            raise ConfigError(
                f"url_expiry_s must be in [1, {MAX_URL_EXPIRY_S}], got {self.url_expiry_s}"
            )
        if self.max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be ≥ 1, got {self.max_message_bytes}")
        if not (math.isfinite(self.flush_timeout_s) and self.flush_timeout_s > 0):
            raise ConfigError(f"flush_timeout_s must be > 0, got {self.flush_timeout_s}")


@dataclass(frozen=True)
class _File:
    spec: ModelFile  # without its URL yet
    data: bytes


def tflite_available() -> bool:
    """The converter (the `tflite` extra) and a runtime to check its output are both here."""
    return importlib.util.find_spec("litert_torch") is not None and bool(
        installed_tflite_runtimes()
    )


class ReleasePipeline:
    """Releases versions of one model; see the module docstring for the steps."""

    def __init__(
        self,
        config: ReleaseConfig,
        *,
        store: ObjectStore,
        producer: Producer | None,
        key: Ed25519PrivateKey,
        key_id: str,
    ) -> None:
        self.config = config
        self.store = store
        self.producer = producer  # None: upload and record only (tests, tools)
        self.key = key
        self.key_id = check_key_id(key_id)
        self.registry = Registry(store)
        self.formats = self._formats(config.tflite)
        self.split: Split = prepare_data(
            config.dataset, seed=config.split_seed, holdout=config.holdout
        )
        self._check_fits(self.split)

    def release(
        self,
        params: Mapping[str, npt.NDArray[Any]],
        *,
        version: int,
        round_id: str | None,
        parent_version: int | None,
        lineage: Lineage,
        extra_metrics: Mapping[str, float] | None = None,
    ) -> RegistryEntry:
        """Release `params` as `version`; returns the registry entry it recorded."""
        _check_arguments(version, round_id, parent_version, lineage)
        module = self._module(params)
        metrics = self._metrics(module, lineage, extra_metrics or {})
        with tempfile.TemporaryDirectory(prefix="fleetlearn-release-") as tmp:
            files, export_manifest = self._export(module, version, Path(tmp))
        manifest = self._sign(version, round_id, files, metrics)
        value = self._encode(manifest, files)
        objects = _objects(files, export_manifest, manifest)
        entry = RegistryEntry(  # validated before anything is written
            model=self.config.model,
            version=version,
            created_at=time.time(),
            round_id=round_id,
            parent_version=parent_version,
            strategy=lineage.strategy,
            metrics=metrics,
            lineage=lineage,
            manifest=manifest,
            files={name: object_key(self.config.model, version, name) for name in objects},
        )
        self._warn_if_replacing(entry)
        for name, data in objects.items():  # inline files too: the registry keeps them all
            content_type = "application/json" if name.endswith(".json") else None
            self.store.put(entry.files[name], data, content_type=content_type)
        self.registry.record(entry)
        if self.producer is not None:
            self._publish(self.producer, version, value)
        log.info(
            "model released",
            extra={"model": self.config.model, "version": version, "metrics": metrics},
        )
        return entry

    def _formats(self, tflite: bool | None) -> tuple[Format, ...]:
        if tflite is None:
            tflite = tflite_available()
        elif tflite and not tflite_available():
            raise ConfigError(
                "tflite=True needs the tflite extra and a TFLite runtime to check parity: "
                "pip install 'fleetlearn[tflite]'"
            )
        return ("onnx", "tflite") if tflite else ("onnx",)

    def _check_fits(self, split: Split) -> None:
        """A config that does not fit the data would fail deep inside torch at every release."""
        module = get_spec(self.config.architecture).build(self.config.architecture_config)
        try:
            evaluate(module, split.test.x[:1], split.test.y[:1])
        except (RuntimeError, ValidationError) as exc:
            raise ConfigError(
                f"{self.config.architecture} config {self.config.architecture_config} does not "
                f"fit data set {self.config.dataset!r}: {' '.join(str(exc).split())}"
            ) from exc

    def _module(self, params: Mapping[str, npt.NDArray[Any]]) -> nn.Module:
        for name, value in params.items():
            array = np.asarray(value)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise ValidationError("holds NaN or Inf", where=f"params[{name!r}]")
        module = get_spec(self.config.architecture).build(self.config.architecture_config)
        set_parameters(module, params)
        return module.eval()

    def _metrics(
        self, module: nn.Module, lineage: Lineage, extra: Mapping[str, float]
    ) -> dict[str, float]:
        test = self.split.test
        metrics = evaluate(module, test.x, test.y) | {
            "heldout_samples": float(len(test.y)),
            "participants": float(len(set(lineage.device_ids))),
            "updates": float(len(lineage.update_ids)),
        }
        clash = sorted(set(extra) & set(metrics))
        if clash:
            raise ValidationError(f"{clash} are computed by the pipeline", where="extra_metrics")
        metrics |= {name: float(value) for name, value in extra.items()}
        bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
        if bad:
            raise ValidationError(f"metrics {bad} are not finite", where="metrics")
        return metrics

    def _export(
        self, module: nn.Module, version: int, directory: Path
    ) -> tuple[dict[str, _File], bytes]:
        """Parity-checked model files and the weights file, read into memory."""
        split = self.split
        request = ExportRequest(
            name=FILE_STEM,
            version=version,
            architecture=self.config.architecture,
            classes=list(split.test.classes),
            heldout_x=split.test.x,
            heldout_y=split.test.y,
            calibration_x=split.train.x[:256],
            preprocessing=split.train.preprocessing,
            int8=self.config.int8,
        )
        exported = export_checked(module, request, directory, formats=self.formats)
        files = {f.name: _File(f, (directory / f.name).read_bytes()) for f in exported.files}
        weights = WeightsFile(
            module,
            self.config.architecture,
            dict(self.config.architecture_config),
            self.config.dataset,
            self.config.split_seed,
        )
        data = save_weights(
            directory / WEIGHTS_NAME, weights, split.train.preprocessing
        ).read_bytes()
        files[WEIGHTS_NAME] = _File(_describe(WEIGHTS_NAME, data), data)
        return files, exported.model_dump_json(indent=2).encode()

    def _sign(
        self,
        version: int,
        round_id: str | None,
        files: Mapping[str, _File],
        metrics: Mapping[str, float],
    ) -> ReleaseManifest:
        # Not models.release.signed_manifest: it labels every file fp32, and int8 files exist.
        specs = tuple(
            f.spec.model_copy(update={"url": self._url(version, name, f)})
            for name, f in files.items()
        )
        unsigned = ReleaseManifest(
            fleet=self.config.fleet,
            model=self.config.model,
            version=version,
            round_id=round_id,
            files=specs,
            metrics=dict(metrics),
            key_id=self.key_id,
        )
        signature = base64.b64encode(self.key.sign(signing_bytes(unsigned))).decode()
        return unsigned.model_copy(update={"signature": signature})

    def _url(self, version: int, name: str, file: _File) -> str | None:
        """None (inline) for small files; else a URL a device can GET without credentials.

        `presign_get` is that URL on every store: a presigned https URL on S3 (`url_for`
        would be an `s3://` URL no device can fetch), the file's `file://` URL on a directory.
        """
        if len(file.data) <= self.config.inline_max_bytes:
            return None
        key = object_key(self.config.model, version, name)
        return self.store.presign_get(key, self.config.url_expiry_s)

    def _warn_if_replacing(self, entry: RegistryEntry) -> None:
        """Same version, other bytes: devices that installed the first keep it. Say so."""
        if entry.version not in self.registry.versions(entry.model):
            return
        try:
            before = self.registry.get(entry.model, entry.version).manifest.files
        except ValidationError as exc:
            log.warning("replacing a damaged registry record", extra={"error": str(exc)})
            return
        if {f.name: f.sha256 for f in before} != {f.name: f.sha256 for f in entry.manifest.files}:
            log.warning(
                "re-releasing a version with different files: devices that installed it "
                "keep the old ones; release a new version instead",
                extra={"model": entry.model, "version": entry.version},
            )

    def _encode(self, manifest: ReleaseManifest, files: Mapping[str, _File]) -> bytes:
        """The release message, refused here if the log would refuse it later."""
        value = encode_release(manifest, {n: (f.spec.format, f.data) for n, f in files.items()})
        limit = self.config.max_message_bytes
        if len(value) + len(self.config.model) > limit:
            inline = sorted(s.name for s in manifest.files if s.url is None)
            raise ValidationError(
                f"the release message would be {len(value)} bytes, over the log's {limit}; "
                f"lower inline_max_bytes ({self.config.inline_max_bytes}) so fewer of "
                f"{inline} ride inline",
                where=f"{self.config.releases_topic}[{self.config.model} v{manifest.version}]",
            )
        return value

    def _publish(self, producer: Producer, version: int, value: bytes) -> None:
        reports: list[DeliveryReport] = []
        producer.produce(
            self.config.releases_topic,
            value,
            key=self.config.model.encode(),
            on_delivery=reports.append,
        )
        pending = producer.flush(self.config.flush_timeout_s)
        where = f"{self.config.releases_topic}[{self.config.model} v{version}]"
        if pending or not reports:
            raise PublishError(
                f"{where}: not confirmed within {self.config.flush_timeout_s} s; "
                "release the same version again to retry"
            )
        error = reports[-1].error
        if error is not None:
            raise PublishError(f"{where}: delivery failed: {error}") from error


def _objects(
    files: Mapping[str, _File], export_manifest: bytes, manifest: ReleaseManifest
) -> dict[str, bytes]:
    """What is uploaded per version: every file, the parity reports, the signed manifest."""
    objects = {name: f.data for name, f in files.items()}
    objects[EXPORT_MANIFEST_JSON] = export_manifest
    objects[RELEASE_JSON] = manifest.model_dump_json(by_alias=True, indent=2).encode()
    return objects


def _check_arguments(
    version: int, round_id: str | None, parent_version: int | None, lineage: Lineage
) -> None:
    if version < 0 or (parent_version is not None and parent_version < 0):
        raise ValidationError(f"versions must be ≥ 0, got {version} / {parent_version}")
    if lineage.round_id != round_id:
        raise ValidationError(
            f"lineage is of round {lineage.round_id!r}, the release of {round_id!r}",
            where="lineage.round_id",
        )


def _describe(name: str, data: bytes) -> ModelFile:
    return ModelFile(
        name=name,
        format="weights",
        quantization="fp32",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
