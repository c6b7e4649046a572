"""MQTT acks leave in arrival order, whatever order the log confirms writes in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bus.bridge.acks import OrderedAcks


def test_a_later_confirmation_waits_for_the_earlier_one() -> None:
    acked: list[int] = []
    acks = OrderedAcks()
    first = acks.add(lambda: acked.append(1), 1.0)
    second = acks.add(lambda: acked.append(2), 2.0)
    assert acks.confirm(second) == []
    assert acked == []
    assert acks.confirm(first) == [1.0, 2.0]
    assert acked == [1, 2]
    assert len(acks) == 0


@given(order=st.permutations(list(range(20))))
def test_any_confirmation_order_acks_in_arrival_order(order: list[int]) -> None:
    acked: list[int] = []
    acks = OrderedAcks()
    entries = [acks.add(lambda i=i: acked.append(i), float(i)) for i in range(20)]  # type: ignore[misc]
    for index in order:
        acks.confirm(entries[index])
        assert acked == list(range(len(acked)))  # always a prefix of the arrival order
    assert acked == list(range(20))
