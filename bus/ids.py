"""Message ids: random, 128-bit, lowercase hex, so receivers can drop duplicates by id."""

from __future__ import annotations

import re
import uuid

MESSAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
_MESSAGE_ID = re.compile(MESSAGE_ID_PATTERN)


def new_message_id() -> str:
    """A fresh id; 122 random bits make a collision across a fleet's lifetime negligible."""
    return uuid.uuid4().hex


def is_message_id(value: object) -> bool:
    return isinstance(value, str) and _MESSAGE_ID.fullmatch(value) is not None
