"""Round selection: the same pure answer on the device and at the coordinator."""

from __future__ import annotations

import hashlib

import pytest

from bus.protocol import RoundAnnouncement, Sampling
from edge_agent.selection import draw, selected

IDS = [f"watch-{i:04d}" for i in range(2000)]


def announcement(round_id: str = "round-1", **sampling: object) -> RoundAnnouncement:
    return RoundAnnouncement(
        fleet="default",
        round_id=round_id,
        model="har",
        base_version=3,
        deadline=1e9,
        sampling=Sampling(**sampling),
    )


def test_device_list_decides_by_membership() -> None:
    round_ = announcement(devices=("watch-0001", "watch-0002"), rate=0.01)
    assert selected(round_, "watch-0001")
    assert selected(round_, "watch-0002")
    assert not selected(round_, "watch-0003")


def test_empty_device_list_selects_no_one() -> None:
    round_ = announcement(devices=())
    assert not any(selected(round_, d) for d in IDS[:100])


def test_rate_one_selects_everyone() -> None:
    round_ = announcement(rate=1.0)
    assert all(selected(round_, d) for d in IDS)


def test_rate_selects_that_fraction() -> None:
    round_ = announcement(rate=0.3, seed=11)
    share = sum(selected(round_, d) for d in IDS) / len(IDS)
    assert share == pytest.approx(0.3, abs=0.04)


def test_selection_is_deterministic_and_varies_by_round() -> None:
    first = [selected(announcement("r1", rate=0.5), d) for d in IDS]
    assert first == [selected(announcement("r1", rate=0.5), d) for d in IDS]
    other_round = [selected(announcement("r2", rate=0.5), d) for d in IDS]
    other_seed = [selected(announcement("r1", rate=0.5, seed=1), d) for d in IDS]
    assert first != other_round
    assert first != other_seed


def test_draw_is_the_documented_hash() -> None:
    # pinned so that any other implementation (the coordinator's) can check itself against it
    assert draw(7, "round-1", "watch-001") == 0.19343312868316498
    digest = hashlib.sha256(b"0:r:d").digest()
    assert draw(0, "r", "d") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert all(0.0 <= draw(0, "r", d) < 1.0 for d in IDS)
