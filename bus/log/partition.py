"""Who owns what: Kafka's default partitioner (murmur2 of the key), and group partition dealing.

The embedded log and Kafka (librdkafka with `partitioner=murmur2_random`) agree on the
partition of every key, so code that relies on "one device, one partition, in order" behaves
the same on one machine and in the cloud.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash as Kafka's Java client computes it (unsigned here)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length - whole
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions`."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def deal(items: Sequence[T], members: Sequence[str], member: str) -> list[T]:
    """The share of `items` that `member` owns when dealt round-robin over the sorted `members`.

    Every member computes this from the same member list, so a group agrees on who owns what
    without a coordinator; a member missing from the list owns nothing until it joins.
    """
    ordered = sorted(set(members))
    if member not in ordered:
        return []
    index, size = ordered.index(member), len(ordered)
    return [item for position, item in enumerate(items) if position % size == index]
