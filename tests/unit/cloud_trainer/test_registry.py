"""The model registry in a file:// store: records, the latest pointer written last, damage named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from bus.errors import ObjectNotFound, ValidationError
from bus.ids import new_message_id
from bus.protocol import ModelFile, ReleaseManifest
from bus.store import ObjectInfo, ObjectStore, open_store
from cloud_trainer.release.registry import (
    Lineage,
    Registry,
    RegistryEntry,
    latest_key,
    object_key,
    record_key,
)

SHA = "0" * 64


class RecordingStore:
    """A real file store that remembers the order of puts."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.puts: list[str] = []

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str | None = None
    ) -> ObjectInfo:
        self.puts.append(key)
        return self.inner.put(key, data, content_type=content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def entry(model: str = "bc", version: int = 1, **changes: Any) -> RegistryEntry:
    update_ids = (new_message_id(), new_message_id())
    manifest = ReleaseManifest(
        fleet="farm",
        model=model,
        version=version,
        round_id="r1",
        files=(
            ModelFile(name="model.onnx", format="onnx", quantization="fp32", sha256=SHA, size=1),
        ),
        metrics={"accuracy": 0.9},
        key_id="k",
        signature="c2ln",
    )
    fields: dict[str, Any] = {
        "model": model,
        "version": version,
        "created_at": 1_700_000_000.5,
        "round_id": "r1",
        "parent_version": version - 1 if version else None,
        "strategy": "fedavg",
        "metrics": {"accuracy": 0.9, "loss": 0.25, "participants": 2.0},
        "lineage": Lineage(
            round_id="r1", update_ids=update_ids, device_ids=("d1", "d2"), strategy="fedavg"
        ),
        "manifest": manifest,
        "files": {"model.onnx": object_key(model, version, "model.onnx")},
    }
    return RegistryEntry(**(fields | changes))


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(open_store(f"file://{tmp_path}/store"))


def test_keys_are_zero_padded_and_in_one_place() -> None:
    assert record_key("bc", 7) == "registry/bc/v000007.json"
    assert latest_key("bc") == "registry/bc/latest.json"
    assert object_key("bc", 7, "model.onnx") == "models/bc/v000007/model.onnx"


def test_record_round_trips_and_writes_the_pointer_last(store: RecordingStore) -> None:
    registry = Registry(store)
    written = entry(version=3)
    assert registry.record(written) == "registry/bc/v000003.json"
    assert store.puts == ["registry/bc/v000003.json", "registry/bc/latest.json"]
    assert registry.get("bc", 3) == written
    assert registry.latest("bc") == written
    pointer = json.loads(store.get("registry/bc/latest.json"))
    assert pointer == {"version": 3, "record": "registry/bc/v000003.json"}
    record = json.loads(store.get("registry/bc/v000003.json"))
    assert record["manifest"]["schema"] == 1  # the manifest as on the wire
    assert record["lineage"]["device_ids"] == ["d1", "d2"]


def test_latest_is_none_before_the_first_release(store: RecordingStore) -> None:
    assert Registry(store).latest("bc") is None
    assert Registry(store).versions("bc") == []


def test_versions_and_a_pointer_that_never_moves_backwards(store: RecordingStore) -> None:
    registry = Registry(store)
    for version in (1, 2, 1_000_000):
        registry.record(entry(version=version))
    registry.record(entry(version=2))  # a retry of an older version
    assert registry.versions("bc") == [1, 2, 1_000_000]
    latest = registry.latest("bc")
    assert latest is not None
    assert latest.version == 1_000_000
    assert store.puts[-1] == "registry/bc/v000002.json"
    assert registry.versions("other") == []


def test_missing_version_is_object_not_found(store: RecordingStore) -> None:
    with pytest.raises(ObjectNotFound, match=r"bc v9 \(registry/bc/v000009.json\)"):
        Registry(store).get("bc", 9)


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b'{"model": "bc"}',
        b"[]",
    ],
)
def test_damaged_record_names_its_key(store: RecordingStore, damage: bytes) -> None:
    registry = Registry(store)
    registry.record(entry())
    store.put("registry/bc/v000001.json", damage)
    with pytest.raises(ValidationError, match=r"registry/bc/v000001\.json.*damaged"):
        registry.get("bc", 1)
    with pytest.raises(ValidationError, match=r"registry/bc/v000001\.json"):
        registry.latest("bc")


def test_record_with_a_wrong_field_names_key_and_field(store: RecordingStore) -> None:
    registry = Registry(store)
    registry.record(entry())
    record = json.loads(store.get("registry/bc/v000001.json"))
    record["metrics"]["loss"] = "low"
    store.put("registry/bc/v000001.json", json.dumps(record).encode())
    with pytest.raises(ValidationError, match=r"v000001\.json.*metrics.*loss"):
        registry.get("bc", 1)


def test_record_is_strict_about_extra_fields(store: RecordingStore) -> None:
    registry = Registry(store)
    registry.record(entry())
    record = json.loads(store.get("registry/bc/v000001.json"))
    record["surprise"] = 1
    store.put("registry/bc/v000001.json", json.dumps(record).encode())
    with pytest.raises(ValidationError, match="surprise"):
        registry.get("bc", 1)


def test_damaged_pointer_names_its_key(store: RecordingStore) -> None:
    registry = Registry(store)
    registry.record(entry())
    store.put("registry/bc/latest.json", b'{"version": "one"}')
    with pytest.raises(ValidationError, match=r"registry/bc/latest\.json"):
        registry.latest("bc")


def test_a_record_under_the_wrong_key_is_refused(store: RecordingStore) -> None:
    registry = Registry(store)
    registry.record(entry(version=1))
    store.put("registry/bc/v000002.json", store.get("registry/bc/v000001.json"))
    with pytest.raises(ValidationError, match=r"v000002\.json: holds bc v1, not bc v2"):
        registry.get("bc", 2)


def test_entry_must_match_its_manifest() -> None:
    with pytest.raises(ValueError, match="the manifest is for bc v1"):
        entry(manifest=entry(version=1).manifest, version=2, parent_version=1)
    with pytest.raises(ValueError, match="without an object key"):
        entry(files={})


def test_bad_model_name_is_refused(store: RecordingStore) -> None:
    with pytest.raises(ValidationError, match="model"):
        Registry(store).latest("a/b")


def test_lineage_checks_ids() -> None:
    with pytest.raises(ValueError, match="update_ids"):
        Lineage(round_id="r", update_ids=("not an id",), device_ids=(), strategy="fedavg")
    with pytest.raises(ValueError, match="device_ids"):
        Lineage(round_id="r", update_ids=(), device_ids=("a/b",), strategy="fedavg")
