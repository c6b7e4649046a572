"""JSON log lines carry the message and every `extra` field, and survive odd values."""

from __future__ import annotations

import json
import logging

from fleetlearn.logging_setup import JsonFormatter


def _format(**extra: object) -> dict[str, object]:
    record = logging.LogRecord(
        "bus.bridge", logging.WARNING, __file__, 1, "dead %s", ("letter",), None
    )
    record.__dict__.update(extra)
    result: dict[str, object] = json.loads(JsonFormatter().format(record))
    return result


def test_message_and_extra_fields_are_separate_keys() -> None:
    entry = _format(topic="fleetlearn/f/devices/d1/update", reason='bad "magic"')
    assert entry["msg"] == "dead letter"
    assert entry["level"] == "warning"
    assert entry["logger"] == "bus.bridge"
    assert entry["topic"] == "fleetlearn/f/devices/d1/update"
    assert entry["reason"] == 'bad "magic"'


def test_values_json_cannot_hold_are_written_as_text() -> None:
    entry = _format(payload=b"\x00\xff", error=ValueError("boom"))
    assert entry["payload"] == "b'\\x00\\xff'"
    assert entry["error"] == "boom"


def test_exceptions_are_included() -> None:
    try:
        raise RuntimeError("kafka gone")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: kafka gone" in entry["exc"]
