"""One total order over a topic's partitions that every replay reproduces.

A consumer hands out records from several partitions in whatever order fetches complete, so two
runs over the same log see different interleavings. Aggregation in floating point is not
associative, and a round that closes on a count includes whichever updates came first: both
would make a restarted trainer differ from one that never stopped. Records are therefore taken
in (timestamp, partition, offset) order. The smallest buffered record is released only when
every partition without a buffered record has been read to its end at a moment at least
`grace_ms` after that record's timestamp; a later record there can then only carry a later
timestamp (record timestamps are set when the bridge receives a message, and `grace_ms` bounds
how far they trail the clock). A record that breaks that bound is still taken, just not in
order: it is logged, because only then could a replay differ.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from bus.log import Consumer, Record

log = logging.getLogger(__name__)

EndOffsets = Callable[[], Mapping[int, int]]


class OrderedReader:
    """Reads `topic` from given offsets (all partitions, no consumer group) in replay order."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        end_offsets: EndOffsets,
        start: Mapping[int, int],
        *,
        grace_ms: int,
        clock: Callable[[], float] = time.time,
        max_buffered: int = 10_000,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self._end_offsets = end_offsets
        self._clock = clock
        self.grace_ms = grace_ms
        self.max_buffered = max_buffered
        self.next_offsets: dict[int, int] = dict(start)
        self._buffers: dict[int, deque[Record]] = {p: deque() for p in start}
        self._read_to: dict[int, int] = dict(start)  # next offset the consumer will hand out
        self._caught_up_at: dict[int, float] = {}  # partition -> ms when seen at its end
        self._last_ends_check = 0.0
        self._last_taken: tuple[int, int, int] | None = None
        consumer.assign([(topic, p, offset) for p, offset in sorted(start.items())])

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def poll(self, timeout: float) -> Record | None:
        """The next record in replay order, or None if none can be released within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            record = self._release()
            if record is not None:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.buffered < self.max_buffered:
                self._fill(min(remaining, 0.1))
            else:
                self._check_ends(force=True)
                if self._release() is None:
                    return self._take_oldest_out_of_order()

    def caught_up(self) -> bool:
        """Every partition read to its end as of the last check, and nothing buffered."""
        self._check_ends(force=True)
        return not self.buffered and len(self._caught_up_at) == len(self._buffers)

    def _fill(self, timeout: float) -> None:
        record = self.consumer.poll(timeout)
        if record is None:
            self._check_ends()
            return
        if record.topic != self.topic or record.partition not in self._buffers:
            return
        self._buffers[record.partition].append(record)
        self._read_to[record.partition] = record.offset + 1
        self._caught_up_at.pop(record.partition, None)

    def _check_ends(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_ends_check < 0.25:
            return
        self._last_ends_check = now
        ends = self._end_offsets()
        for partition in self._buffers:
            if self._read_to[partition] >= ends.get(partition, 0):
                self._caught_up_at[partition] = now * 1000  # the latest confirmation counts
            else:
                self._caught_up_at.pop(partition, None)

    def _release(self) -> Record | None:
        heads = [(b[0].timestamp_ms, p, b[0].offset) for p, b in self._buffers.items() if b]
        if not heads:
            return None
        first = min(heads)
        for partition, buffer in self._buffers.items():
            if buffer:
                continue
            seen_at = self._caught_up_at.get(partition)
            if seen_at is None or seen_at - self.grace_ms < first[0]:
                return None
        return self._take(first[1])

    def _take(self, partition: int) -> Record:
        record = self._buffers[partition].popleft()
        self.next_offsets[partition] = record.offset + 1
        key = (record.timestamp_ms, record.partition, record.offset)
        if self._last_taken is not None and key < self._last_taken:
            log.warning(
                "record taken out of timestamp order; a replay may order it differently",
                extra={"partition": partition, "offset": record.offset},
            )
        self._last_taken = key
        return record

    def _take_oldest_out_of_order(self) -> Record | None:
        heads = [(b[0].timestamp_ms, p) for p, b in self._buffers.items() if b]
        if not heads:
            return None
        log.warning(
            "buffer full while a partition lags; taking the oldest record without the order "
            "guarantee",
            extra={"buffered": self.buffered},
        )
        return self._take(min(heads)[1])

    def positions(self) -> dict[int, int]:
        """Per partition, the offset after the last record handed out: where a replay starts."""
        return dict(self.next_offsets)

    def close(self) -> None:
        self.consumer.close()
