"""Which partitions a rank owns, and what a run has trained: pure functions, no I/O.

A rank's shard is every `world`-th partition starting at its rank, so shards are disjoint and
together cover the topic whatever the world size. Offsets are kept per partition, never per
rank, which is what lets a job restart with another number of processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def partitions_for(rank: int, world: int, partitions: Iterable[int]) -> list[int]:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return sorted(partitions)[rank::world]


def merge_offsets(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """One offset per partition from every rank's record; two ranks claiming one partition
    is a broken checkpoint, not something to average away."""
    merged: dict[int, int] = {}
    for part in parts:
        for partition, offset in part.items():
            if partition in merged and merged[partition] != offset:
                raise ValueError(
                    f"partition {partition} has two offsets ({merged[partition]} and {offset})"
                )
            merged[partition] = offset
    return dict(sorted(merged.items()))


def as_ranges(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """(partition, offset) pairs as [partition, first, last + 1] runs: small to store."""
    runs: list[list[int]] = []
    for partition, offset in sorted(pairs):
        if runs and runs[-1][0] == partition and runs[-1][2] == offset:
            runs[-1][2] = offset + 1
        else:
            runs.append([partition, offset, offset + 1])
    return runs


def from_ranges(runs: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    return [(p, o) for p, first, end in runs for o in range(first, end)]
