"""Acknowledge MQTT messages in arrival order, however the log's confirmations come back.

MQTT requires in-order acknowledgement on a session; Kafka confirms per partition, so a
later message can be confirmed first. Each message waits here until it and everything that
arrived before it are safely written. Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Entry:
    ack: Callable[[], None]
    received_at: float
    done: bool = field(default=False)


class OrderedAcks:
    def __init__(self) -> None:
        self._queue: deque[_Entry] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, ack: Callable[[], None], received_at: float) -> _Entry:
        entry = _Entry(ack, received_at)
        self._queue.append(entry)
        return entry

    def confirm(self, entry: _Entry) -> list[float]:
        """Mark `entry` written; ack every leading written entry; return their receive times."""
        entry.done = True
        released: list[float] = []
        while self._queue and self._queue[0].done:
            head = self._queue.popleft()
            head.ack()
            released.append(head.received_at)
        return released
