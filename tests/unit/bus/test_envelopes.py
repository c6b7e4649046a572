"""Headers: every kind round-trips (compressed or not), and each rule's error names its field."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bus.errors import ValidationError
from bus.ids import is_message_id, new_message_id
from bus.protocol import (
    CodecSpec,
    Command,
    DataBatch,
    Envelope,
    ModelFile,
    ModelUpdate,
    PayloadInfo,
    PayloadRef,
    Privacy,
    ReleaseManifest,
    RoundAnnouncement,
    Sampling,
    Status,
    TrainingConfig,
    decode_message,
    encode_data,
    encode_message,
    encode_update,
    peek_header,
    signing_bytes,
)
from bus.protocol.frame import FLAG_ZSTD, FLAG_ZSTD_HEADER, pack_frame, unpack_frame
from tests.unit.bus.protocol_samples import samples

SETTINGS = settings(max_examples=150, deadline=None)
names = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True)
device_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)
finite = st.floats(-1e12, 1e12, allow_nan=False)
metrics = st.dictionaries(st.text(min_size=1, max_size=16), finite, max_size=4)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
CODECS = [CodecSpec(name=n) for n in ("fp32", "fp16", "int8")]
CODECS.append(CodecSpec(name="topk", topk_ratio=0.3))


def _header(data: bytes) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(bytes(unpack_frame(data).header))
    return header


def _reframe(data: bytes, header: dict[str, Any]) -> bytes:
    frame = unpack_frame(data)
    return pack_frame(
        json.dumps(header).encode(),
        bytes(frame.payload),
        compressed=frame.compressed,
        compress_header=frame.header_compressed,
    )


def _round_trip(data: bytes, sent: Envelope, compress: bool) -> Envelope:
    """Decode `data`, check the header came back as sent (payload info aside), return it."""
    decoded = decode_message(data).envelope
    assert peek_header(data) == decoded
    assert decoded.model_dump(exclude={"payload", "tensors"}) == sent.model_dump(
        exclude={"payload", "tensors"}
    )
    if decoded.payload is not None:
        assert decoded.payload.compression == ("zstd" if compress else "none")
        assert data[5] & FLAG_ZSTD == int(compress)
    assert compress or not data[5] & FLAG_ZSTD_HEADER
    return decoded


@SETTINGS
@given(
    delta=st.dictionaries(
        names,
        hnp.arrays(np.float32, shapes, elements=st.floats(-100, 100, width=32)),
        min_size=1,
        max_size=4,
    ),
    codec=st.sampled_from(CODECS),
    counters=st.booleans(),
    privacy=st.none() | st.builds(Privacy, epsilon=st.floats(0, 10), delta=st.floats(0, 1)),
    measured=metrics,
    compress=st.booleans(),
)
def test_update_round_trips(
    delta: dict[str, np.ndarray],
    codec: CodecSpec,
    counters: bool,
    privacy: Privacy | None,
    measured: dict[str, float],
    compress: bool,
) -> None:
    if counters:
        delta = {**delta, "the.step_counter": np.array([3, 4])}
    header = ModelUpdate(
        fleet="f",
        device_id="d-1",
        round_id="r",
        model="m",
        base_version=0,
        num_examples=1,
        codec=codec,
        metrics=measured,
        privacy=privacy,
    )
    data, _ = encode_update(header, delta, compress=compress)
    envelope = _round_trip(data, header, compress)
    assert isinstance(envelope, ModelUpdate)
    assert [t.name for t in envelope.tensors] == list(delta)
    tensors = decode_message(data).tensors
    for name, value in delta.items():
        assert tensors[name].shape == value.shape
        if codec.name == "fp32" or value.dtype.kind != "f":
            np.testing.assert_array_equal(tensors[name], value)


@SETTINGS
@given(
    tensors=st.dictionaries(
        names,
        hnp.arrays(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_]), shapes),
        min_size=1,
        max_size=4,
    ),
    labels=st.none() | st.lists(st.text(min_size=1, max_size=10), max_size=5).map(tuple),
    compress=st.booleans(),
)
def test_data_batch_round_trips(
    tensors: dict[str, np.ndarray], labels: tuple[str, ...] | None, compress: bool
) -> None:
    header = DataBatch(fleet="f", device_id="d", stream="imu", num_samples=3, label_names=labels)
    data = encode_data(header, tensors, compress=compress)
    _round_trip(data, header, compress)
    decoded = decode_message(data).tensors
    assert list(decoded) == list(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(decoded[name], value)
        assert decoded[name].dtype == value.dtype


@SETTINGS
@given(
    device_id=device_ids,
    online=st.booleans(),
    model=st.none() | names,
    version=st.none() | st.integers(0, 2**40),
    rows=st.integers(0, 2**40),
    cpu=st.none() | st.floats(0, 100),
    temperature=st.none() | st.floats(-50, 150),
    battery=st.none() | st.booleans(),
    agent=st.text(max_size=20),
)
def test_status_round_trips(
    device_id: str,
    online: bool,
    model: str | None,
    version: int | None,
    rows: int,
    cpu: float | None,
    temperature: float | None,
    battery: bool | None,
    agent: str,
) -> None:
    status = Status(
        fleet="f",
        device_id=device_id,
        online=online,
        model=model,
        model_version=version,
        buffer_rows=rows,
        cpu_percent=cpu,
        memory_percent=cpu,
        temperature_c=temperature,
        on_battery=battery,
        agent_version=agent,
    )
    for compress in (False, True):  # no payload: only the header may be compressed
        data = encode_message(status, compress=compress)
        _round_trip(data, status, compress)
        assert not data[5] & FLAG_ZSTD


@SETTINGS
@given(
    training=st.builds(
        TrainingConfig,
        epochs=st.integers(1, 100),
        max_steps=st.none() | st.integers(1, 10**6),
        batch_size=st.integers(1, 4096),
        learning_rate=st.floats(1e-6, 10),
        fedprox_mu=st.floats(0, 1),
        codec=st.sampled_from(CODECS),
        compression=st.sampled_from(["none", "zstd"]),
        clip_norm=st.none() | st.floats(0.01, 100),
        noise_multiplier=st.none() | st.floats(0, 10),
    ),
    sampling=st.builds(
        Sampling,
        rate=st.floats(0.001, 1),
        min_devices=st.integers(1, 1000),
        devices=st.none() | st.lists(device_ids, max_size=5).map(tuple),
        seed=st.integers(-(2**63), 2**63 - 1),
    ),
    mode=st.sampled_from(["sync", "async"]),
)
def test_round_announcement_round_trips(
    training: TrainingConfig, sampling: Sampling, mode: str
) -> None:
    announcement = RoundAnnouncement(
        fleet="f",
        round_id="r-1",
        model="m",
        base_version=2,
        mode=mode,
        deadline=1.9e9,
        training=training,
        sampling=sampling,
    )
    _round_trip(encode_message(announcement), announcement, False)


@SETTINGS
@given(
    inline=st.lists(st.binary(max_size=64), min_size=0, max_size=3),
    remote=st.integers(0, 2),
    signature=st.none() | st.binary(min_size=64, max_size=64),
    compress=st.booleans(),
)
def test_release_manifest_round_trips(
    inline: list[bytes], remote: int, signature: bytes | None, compress: bool
) -> None:
    import base64

    files = [
        ModelFile(
            name=f"m{i}.onnx",
            format="onnx",
            quantization="fp32",
            sha256=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
        )
        for i, blob in enumerate(inline)
    ]
    files += [
        ModelFile(
            name=f"r{i}.tflite",
            format="tflite",
            quantization="int8",
            sha256="0" * 64,
            size=10,
            url=f"https://store.example/r{i}",
        )
        for i in range(remote + (0 if inline else 1))
    ]
    manifest = ReleaseManifest(
        fleet="f",
        model="m",
        version=7,
        files=files,
        key_id="k",
        signature=None if signature is None else base64.b64encode(signature).decode(),
    )
    payload = {f"m{i}.onnx": np.frombuffer(blob, dtype=np.uint8) for i, blob in enumerate(inline)}
    data = encode_message(manifest, payload, compress=compress)
    decoded = _round_trip(data, manifest, compress)
    assert isinstance(decoded, ReleaseManifest)
    assert signing_bytes(decoded) == signing_bytes(manifest)
    tensors = decode_message(data).tensors
    assert {name: bytes(array) for name, array in tensors.items()} == {
        f"m{i}.onnx": blob for i, blob in enumerate(inline)
    }


@SETTINGS
@given(
    command=st.sampled_from(["train_now", "report", "rollback"]),
    args=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.booleans() | st.integers(-(2**31), 2**31) | finite | st.text(max_size=10),
        max_size=4,
    ),
)
def test_command_round_trips(command: str, args: dict[str, Any]) -> None:
    sent = Command(fleet="f", device_id="d", command=command, args=args)
    decoded = _round_trip(encode_message(sent), sent, False)
    assert isinstance(decoded, Command)
    for key, value in args.items():  # bool stays bool, int stays int
        assert type(decoded.args[key]) is type(value)


# (kind, change to the valid sample's header, field path, words in the message)
RULES: list[tuple[str, dict[str, Any], str, str]] = [
    ("status", {"schema": 2}, "header.schema", "unsupported schema version 2"),
    ("status", {"schema": "1"}, "header.schema", "unsupported schema version '1'"),
    ("status", {"kind": ["status"]}, "header.kind", "unknown kind"),
    ("status", {"id": "ABC"}, "header.id", "should match pattern"),
    ("status", {"id": new_message_id().upper()}, "header.id", "should match pattern"),
    ("status", {"created_at": float("inf")}, "header", "Infinity is not allowed in JSON"),
    ("status", {"fleet": "x" * 65}, "header.fleet", "should match pattern"),
    ("status", {"fleet": "a/b"}, "header.fleet", "should match pattern"),
    ("status", {"device_id": "a+b"}, "header.device_id", "should match pattern"),
    ("status", {"device_id": "a#"}, "header.device_id", "should match pattern"),
    ("status", {"device_id": ""}, "header.device_id", "should match pattern"),
    ("status", {"cpu_percent": 100.5}, "header.cpu_percent", "less than or equal to 100"),
    ("status", {"online": 1}, "header.online", "valid boolean"),
    ("status", {"buffer_rows": -1}, "header.buffer_rows", "greater than or equal to 0"),
    (
        "status",
        {"payload_ref": {"url": "s3://b/k", "sha256": "0" * 64, "length": 1}},
        "header.payload",
        "carry no payload",
    ),
    ("round", {"mode": "sometimes"}, "header.mode", "'sync' or 'async'"),
    ("round", {"deadline": None}, "header.deadline", "valid number"),
    ("round", {"training": {"batch_size": 0}}, "header.training.batch_size", "(got 0)"),
    ("round", {"training": {"learning_rate": 0}}, "header.training.learning_rate", "greater"),
    (
        "round",
        {"training": {"codec": {"name": "topk", "topk_ratio": None}}},
        "header.training.codec",
        "topk_ratio is required",
    ),
    (
        "round",
        {"training": {"codec": {"name": "int8", "topk_ratio": 0.1}}},
        "header.training.codec",
        "only for topk",
    ),
    (
        "round",
        {"training": {"codec": {"name": "topk", "topk_ratio": 1.5}}},
        "header.training.codec.topk_ratio",
        "less than or equal to 1",
    ),
    ("round", {"sampling": {"rate": 0}}, "header.sampling.rate", "greater than 0"),
    ("round", {"sampling": {"devices": ["ok", "no/pe"]}}, "header.sampling.devices[1]", "pattern"),
    ("command", {"command": "reboot"}, "header.command", "'train_now', 'report' or 'rollback'"),
    ("command", {"args": {"k": [1]}}, "header.args", "argument 'k' must be a string"),
    ("command", {"args": {"": 1}}, "header.args", "1..64 characters"),
    ("update", {"num_examples": 0}, "header.num_examples", "(got 0)"),
    ("update", {"metrics": {"loss": float("nan")}}, "header", "NaN is not allowed in JSON"),
    ("update", {"privacy": {"epsilon": -1, "delta": 0}}, "header.privacy.epsilon", "greater"),
    ("update", {"tensors": []}, "header.tensors", "at least one tensor"),
    (
        "update",
        {"payload_ref": {"url": "s3://b/k", "sha256": "0" * 64, "length": 1}},
        "header",
        "inline or by reference, not both",
    ),
    ("release", {"files": []}, "header.files", "at least 1"),
    ("release", {"signature": "not base64!"}, "header.signature", "pattern"),
    ("release", {"key_id": ""}, "header.key_id", "at least 1"),
]


def _apply(header: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(header.get(key), dict):
            _apply(header[key], value)
        else:
            header[key] = value


@pytest.mark.parametrize(("kind", "change", "where", "words"), RULES)
def test_rules_name_the_field(kind: str, change: dict[str, Any], where: str, words: str) -> None:
    data = samples(False)[kind]
    header = _header(data)
    _apply(header, change)
    for decode in (decode_message, peek_header):
        with pytest.raises(ValidationError) as caught:
            decode(_reframe(data, header))
        assert caught.value.where == where, str(caught.value)
        assert words in str(caught.value)
        assert str(caught.value).startswith(f"{where}: ")


def test_release_file_names_cannot_hold_a_path() -> None:
    data = samples(False)["release"]
    header = _header(data)
    header["files"][0]["name"] = "../har.onnx"
    with pytest.raises(ValidationError) as caught:
        decode_message(_reframe(data, header))
    assert caught.value.where == "header.files[0].name"


def test_tensor_names_must_be_unique() -> None:
    data = samples(False)["update"]
    header = _header(data)
    header["tensors"].append(header["tensors"][0])
    with pytest.raises(ValidationError, match=r"'fc\.weight' appears twice") as caught:
        decode_message(_reframe(data, header))
    assert caught.value.where == "header.tensors"


def test_absurd_manifest_shapes_are_refused_before_allocating() -> None:
    data = samples(False)["update"]
    header = _header(data)
    header["tensors"][0]["shape"] = [0, 2**40, 2**40]
    with pytest.raises(ValidationError, match=r"2\*\*53"):
        peek_header(_reframe(data, header))
    header["tensors"][0]["shape"] = [2**40]  # 4 TiB once decoded, e.g. by top-k
    with pytest.raises(ValidationError, match="decoded tensors would take") as caught:
        peek_header(_reframe(data, header))
    assert caught.value.where == "header.tensors"


def test_overflowing_numbers_are_not_finite() -> None:
    data = samples(False)["update"]
    header = _header(data)
    header["created_at"] = "OVERFLOW"
    raw = json.dumps(header).replace('"OVERFLOW"', "1e400").encode()
    with pytest.raises(ValidationError, match="finite") as caught:
        decode_message(pack_frame(raw, bytes(unpack_frame(data).payload), compressed=False))
    assert caught.value.where == "header.created_at"


def test_strict_types_on_the_wire() -> None:
    data = samples(False)["status"]
    for field, value in [("online", "true"), ("buffer_rows", 1.0), ("created_at", "1")]:
        header = _header(data)
        header[field] = value
        with pytest.raises(ValidationError) as caught:
            decode_message(_reframe(data, header))
        assert caught.value.where == f"header.{field}"


def test_building_a_bad_header_in_python_fails_at_once() -> None:
    with pytest.raises(pydantic.ValidationError):
        Status(fleet="f", device_id="no/slash", online=True)
    with pytest.raises(pydantic.ValidationError):
        ModelUpdate.model_validate({"fleet": "f", "surprise": 1})
    with pytest.raises(pydantic.ValidationError, match="not both"):
        Status(
            fleet="f",
            device_id="d",
            online=True,
            payload=PayloadInfo(length=1, raw_length=1, xxh3_128="0" * 32, compression="none"),
            payload_ref=PayloadRef(url="s3://b/k", sha256="0" * 64, length=1),
        )


def test_encoding_refuses_what_decoding_would_refuse() -> None:
    header = Status(fleet="f", device_id="d", online=True)
    with pytest.raises(ValidationError, match="carry no payload"):
        encode_message(header, {"x": np.zeros(1, dtype=np.uint8)})
    # model_copy skips validation; the encoder re-checks the header it writes
    broken = header.model_copy(update={"device_id": "a/b"})
    with pytest.raises(ValidationError) as caught:
        encode_message(broken)
    assert caught.value.where == "header.device_id"


def test_ids_are_lowercase_hex_and_fresh_per_message() -> None:
    first, second = (
        Status(fleet="f", device_id="d", online=True),
        Status(fleet="f", device_id="d", online=True),
    )
    assert is_message_id(first.id)
    assert first.id != second.id
    assert not is_message_id(first.id.upper())
    assert _header(encode_message(first))["schema"] == 1
