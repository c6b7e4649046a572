"""OrderedReader: one (timestamp, partition, offset) order whatever the consumer's interleaving."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.log import Record
from cloud_trainer.ordered import OrderedReader

TOPIC = "fleetlearn.updates"
GRACE_MS = 500
HELD = 0.02  # seconds a poll that must come back empty may spin (the fake consumer never blocks)
READY = 2.0  # upper bound for a poll that must release a record (it returns as soon as it does)


class FakeConsumer:
    """Hands out queued records in the order given, then None; records what it was asked."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.queue: deque[Record] = deque(records)
        self.assigned: list[tuple[str, int, int | None]] = []
        self.closed = False

    def assign(self, partitions: Sequence[tuple[str, int, int | None]]) -> None:
        self.assigned = list(partitions)

    def poll(self, timeout: float = 1.0) -> Record | None:
        return self.queue.popleft() if self.queue else None

    def close(self) -> None:
        self.closed = True


class FakeEnds:
    """The end-offsets function: returns whatever the test last set."""

    def __init__(self, ends: Mapping[int, int]) -> None:
        self.ends = dict(ends)
        self.calls = 0

    def __call__(self) -> Mapping[int, int]:
        self.calls += 1
        return dict(self.ends)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(partition: int, offset: int, timestamp_ms: int, topic: str = TOPIC) -> Record:
    return Record(topic, partition, offset, None, b"v", (), timestamp_ms)


def key(r: Record) -> tuple[int, int, int]:
    return (r.timestamp_ms, r.partition, r.offset)


def reader(
    consumer: FakeConsumer,
    ends: FakeEnds,
    clock: FakeClock,
    start: Mapping[int, int],
    *,
    max_buffered: int = 10_000,
) -> OrderedReader:
    return OrderedReader(
        consumer,  # type: ignore[arg-type]  # the reader uses only assign, poll and close
        TOPIC,
        ends,
        start,
        grace_ms=GRACE_MS,
        clock=clock,
        max_buffered=max_buffered,
    )


# -- ordering -------------------------------------------------------------------------------


@st.composite
def interleaved(draw: st.DrawFn) -> tuple[dict[int, list[Record]], list[Record], dict[int, int]]:
    """Per-partition sequences (timestamps non-decreasing within a partition, as the bridge's
    append times are), a random interleaving of them, and the start offsets."""
    partitions = draw(st.integers(1, 4))
    start = {p: draw(st.integers(0, 50)) for p in range(partitions)}
    per_partition: dict[int, list[Record]] = {}
    for p in range(partitions):
        stamps = sorted(draw(st.lists(st.integers(1_000, 1_020), max_size=6)))
        per_partition[p] = [record(p, start[p] + i, ts) for i, ts in enumerate(stamps)]
    # Interleave by drawing, at each step, which partition's next record the consumer hands out.
    cursors = {p: 0 for p in per_partition}
    order: list[Record] = []
    while True:
        left = [p for p in sorted(cursors) if cursors[p] < len(per_partition[p])]
        if not left:
            break
        p = draw(st.sampled_from(left))
        order.append(per_partition[p][cursors[p]])
        cursors[p] += 1
    return per_partition, order, start


@settings(deadline=None, max_examples=150)
@given(interleaved())
def test_any_interleaving_gives_the_same_order(
    case: tuple[dict[int, list[Record]], list[Record], dict[int, int]],
) -> None:
    per_partition, order, start = case
    ends = FakeEnds({p: start[p] + len(records) for p, records in per_partition.items()})
    # Long after every timestamp + grace: every confirmation of an end releases what waits.
    clock = FakeClock(100.0)
    ordered = reader(FakeConsumer(order), ends, clock, start)
    out = [ordered.poll(READY) for _ in order]
    assert all(r is not None for r in out)
    expected = sorted((r for rs in per_partition.values() for r in rs), key=key)
    assert [key(r) for r in out if r is not None] == [key(r) for r in expected]
    assert ordered.caught_up()
    assert ordered.positions() == ends.ends


def test_records_come_out_sorted_by_timestamp_then_partition_then_offset() -> None:
    handed = [
        record(1, 0, 2_000),
        record(1, 1, 2_000),
        record(0, 0, 2_000),
        record(0, 1, 3_000),
        record(2, 0, 1_000),
    ]
    ends = FakeEnds({0: 2, 1: 2, 2: 1})
    ordered = reader(FakeConsumer(handed), ends, FakeClock(100.0), {0: 0, 1: 0, 2: 0})
    out = [ordered.poll(READY) for _ in handed]
    assert [(r.partition, r.offset) for r in out if r is not None] == [
        (2, 0),
        (0, 0),
        (1, 0),
        (1, 1),
        (0, 1),
    ]


def test_assigns_every_partition_from_its_start_offset() -> None:
    consumer = FakeConsumer()
    reader(consumer, FakeEnds({}), FakeClock(100.0), {2: 9, 0: 4, 1: 0})
    assert consumer.assigned == [(TOPIC, 0, 4), (TOPIC, 1, 0), (TOPIC, 2, 9)]


def test_records_of_other_topics_and_partitions_are_ignored() -> None:
    consumer = FakeConsumer([record(0, 0, 1_000, topic="other"), record(7, 0, 1_000)])
    ordered = reader(consumer, FakeEnds({0: 0}), FakeClock(100.0), {0: 0})
    assert ordered.poll(HELD) is None
    assert ordered.buffered == 0


# -- holding back -----------------------------------------------------------------------------


def test_record_waits_until_the_silent_partition_is_confirmed_at_its_end_after_grace() -> None:
    ts = 10_000
    consumer = FakeConsumer([record(0, 0, ts)])
    ends = FakeEnds({0: 1, 1: 1})  # partition 1 has a record the consumer has not handed out
    clock = FakeClock(10.0)
    ordered = reader(consumer, ends, clock, {0: 0, 1: 0})

    assert ordered.poll(HELD) is None  # partition 1 is neither buffered nor caught up
    assert ordered.buffered == 1

    ends.ends = {0: 1, 1: 0}  # partition 1 turns out to be at its end...
    clock.now = 10.25  # ...confirmed at 10 250 ms < ts + grace: a record may still be on its way
    assert ordered.poll(HELD) is None

    clock.now = 10.5  # confirmed at exactly ts + grace: nothing earlier can still come
    released = ordered.poll(READY)
    assert released is not None
    assert key(released) == (ts, 0, 0)


def test_record_waits_while_the_other_partition_lags_however_late_the_clock() -> None:
    consumer = FakeConsumer([record(0, 0, 1_000)])
    ends = FakeEnds({0: 1, 1: 3})
    clock = FakeClock(50.0)
    ordered = reader(consumer, ends, clock, {0: 0, 1: 0})
    assert ordered.poll(HELD) is None
    clock.now = 60.0
    assert ordered.poll(HELD) is None
    assert ends.calls >= 2  # the ends were checked again: partition 1 is still behind

    # Its earlier record arrives: it goes first, and partition 0's follows without a check.
    consumer.queue.append(record(1, 0, 900))
    first = ordered.poll(READY)
    assert first is not None
    assert key(first) == (900, 1, 0)
    assert ordered.poll(HELD) is None  # partition 1 emptied and is not yet at its end (3)
    consumer.queue.extend([record(1, 1, 1_100), record(1, 2, 1_200)])
    second = ordered.poll(READY)
    assert second is not None
    assert key(second) == (1_000, 0, 0)


def test_a_buffered_record_elsewhere_is_enough_to_release_the_smallest() -> None:
    consumer = FakeConsumer([record(0, 0, 2_000), record(1, 0, 1_000)])
    # The ends say both partitions have much more, and the clock never moves: no confirmation.
    ordered = reader(consumer, FakeEnds({0: 10, 1: 10}), FakeClock(0.0), {0: 0, 1: 0})
    first = ordered.poll(READY)
    assert first is not None
    assert key(first) == (1_000, 1, 0)
    assert ordered.poll(HELD) is None  # partition 1 is now empty and not at its end


def test_full_buffer_takes_the_oldest_out_of_order(caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer([record(0, 0, 1_000)])
    ends = FakeEnds({0: 1, 1: 5})  # partition 1 lags and never delivers
    ordered = reader(consumer, ends, FakeClock(100.0), {0: 0, 1: 0}, max_buffered=1)
    released = ordered.poll(READY)
    assert released is not None
    assert key(released) == (1_000, 0, 0)
    assert "without the order guarantee" in caplog.text


# -- positions and caught_up ------------------------------------------------------------------


def test_positions_follow_records_handed_out_not_buffered() -> None:
    consumer = FakeConsumer([record(0, 5, 2_000), record(0, 6, 3_000), record(1, 7, 1_000)])
    ends = FakeEnds({0: 7, 1: 8})
    ordered = reader(consumer, ends, FakeClock(100.0), {0: 5, 1: 7})
    assert ordered.positions() == {0: 5, 1: 7}

    first = ordered.poll(READY)
    assert first is not None
    assert key(first) == (1_000, 1, 7)
    assert ordered.buffered == 2  # partition 0's two records were read to get here
    assert ordered.positions() == {0: 5, 1: 8}

    second = ordered.poll(READY)
    assert second is not None
    assert key(second) == (2_000, 0, 5)
    assert ordered.positions() == {0: 6, 1: 8}

    third = ordered.poll(READY)
    assert third is not None
    assert ordered.positions() == {0: 7, 1: 8}
    # A copy: changing it does not move the reader.
    ordered.positions()[0] = 0
    assert ordered.positions() == {0: 7, 1: 8}


def test_caught_up() -> None:
    consumer = FakeConsumer([record(0, 0, 1_000)])
    ends = FakeEnds({0: 1, 1: 0})
    clock = FakeClock(100.0)
    ordered = reader(consumer, ends, clock, {0: 0, 1: 0})
    assert not ordered.caught_up()  # partition 0's record is not read yet

    out = ordered.poll(READY)
    assert out is not None
    assert ordered.caught_up()

    ends.ends = {0: 2, 1: 0}  # a new record was appended: caught_up asks again, not from memory
    assert not ordered.caught_up()
    consumer.queue.append(record(0, 1, 1_500))
    assert ordered.poll(READY) is not None
    assert ordered.caught_up()


def test_caught_up_is_false_while_records_are_buffered() -> None:
    consumer = FakeConsumer([record(0, 0, 1_000)])
    ends = FakeEnds({0: 1, 1: 1})
    ordered = reader(consumer, ends, FakeClock(100.0), {0: 0, 1: 0})
    assert ordered.poll(HELD) is None
    assert ordered.buffered == 1
    ends.ends = {0: 1, 1: 0}
    assert not ordered.caught_up()  # every partition is at its end, but one record waits


def test_close_closes_the_consumer() -> None:
    consumer = FakeConsumer()
    reader(consumer, FakeEnds({}), FakeClock(0.0), {0: 0}).close()
    assert consumer.closed
