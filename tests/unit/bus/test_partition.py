"""murmur2 matches Kafka's Java client (its test vectors); dealing covers every partition."""

from __future__ import annotations

import pytest

from bus.log.partition import deal, murmur2, partition_for


@pytest.mark.parametrize(
    ("data", "signed"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, signed: int) -> None:
    assert murmur2(data) == signed & 0xFFFFFFFF


def test_partition_is_positive_modulo() -> None:
    assert partition_for(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    with pytest.raises(ValueError, match="at least one"):
        partition_for(b"k", 0)


def test_deal_gives_every_partition_to_exactly_one_member() -> None:
    partitions = list(range(7))
    members = ["m3", "m1", "m2"]
    shares = [deal(partitions, members, m) for m in members]
    assert sorted(p for share in shares for p in share) == partitions
    assert deal(partitions, members, "m1") == [0, 3, 6]  # sorted ids: m1 first, round-robin
    assert deal(partitions, ["m1"], "m1") == partitions
    assert deal(partitions, members, "stranger") == []


def test_keys_spread_over_every_partition() -> None:
    counts = [0] * 4
    for i in range(400):
        counts[partition_for(f"device-{i}".encode(), 4)] += 1
    assert min(counts) > 50, counts
