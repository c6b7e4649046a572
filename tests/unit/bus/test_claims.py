"""Claim checks on a file store: the round trip, and every way a claim can lie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bus.errors import ValidationError
from bus.protocol import decode_message, encode_message, encode_update, peek_header
from bus.store import open_store
from bus.store.claims import claim_key, put_claim, resolve_claim
from tests.unit.bus.protocol_samples import samples, update_header


def _big_update() -> bytes:
    delta = {"w": np.arange(20_000, dtype=np.float32)}
    return encode_update(update_header("fp32"), delta)[0]


def test_round_trip_through_the_store(tmp_path: Path) -> None:
    store = open_store((tmp_path / "claims dir").as_uri())
    message = _big_update()
    header = peek_header(message)
    record = put_claim(store, message, header, "pi-01")
    assert len(record) < 2000 < len(message)
    ref = peek_header(record).payload_ref
    assert ref is not None
    assert ref.length == len(message)
    assert resolve_claim(record, store) == message
    np.testing.assert_array_equal(decode_message(message).tensors["w"], np.arange(20_000))


@pytest.mark.parametrize("kind", ["update", "status", "release"])
def test_plain_messages_pass_through(kind: str) -> None:
    message = samples(compress=False)[kind]
    assert resolve_claim(message, None) is message


def test_claim_without_a_store_is_an_error(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    message = _big_update()
    record = put_claim(store, message, peek_header(message), "pi-01")
    with pytest.raises(ValidationError, match="no store is configured"):
        resolve_claim(record, None)


def test_tampered_object_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    message = _big_update()
    header = peek_header(message)
    record = put_claim(store, message, header, "pi-01")
    key = claim_key("pi-01", str(header.id))
    store.put(key, message[:-1] + bytes([message[-1] ^ 1]))
    with pytest.raises(ValidationError, match=r"payload_ref\.sha256"):
        resolve_claim(record, store)
    store.put(key, message[:-10])
    with pytest.raises(ValidationError, match=r"payload_ref\.length"):
        resolve_claim(record, store)


def test_swapped_object_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    first, second = _big_update(), _big_update()
    record = put_claim(store, first, peek_header(first), "pi-01")
    other = put_claim(store, second, peek_header(second), "pi-01")
    ref = peek_header(other).payload_ref
    assert ref is not None
    # first's header pointing at second's object: length and hash match, the id does not
    header = peek_header(first)
    forged = encode_message(header.model_copy(update={"payload": None, "payload_ref": ref}))
    with pytest.raises(ValidationError, match="the record names"):
        resolve_claim(forged, store)
    assert resolve_claim(record, store) == first


def test_claim_outside_the_store_is_not_fetched(tmp_path: Path) -> None:
    store = open_store((tmp_path / "a").as_uri())
    elsewhere = open_store((tmp_path / "b").as_uri())
    message = _big_update()
    record = put_claim(elsewhere, message, peek_header(message), "pi-01")
    with pytest.raises(ValidationError, match="outside the store"):
        resolve_claim(record, store)
