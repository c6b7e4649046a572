"""Coordinator: which updates count, when rounds close or are abandoned, and what comes next."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bus.protocol import CodecSpec, ModelUpdate, Status
from bus.protocol.selection import draw
from cloud_trainer.checkpoint import RoundState
from cloud_trainer.config import TrainerConfig
from cloud_trainer.coordinator import Coordinator, SeenIds, first_round
from cloud_trainer.strategies import build_strategy

Arrays = dict[str, npt.NDArray[Any]]

NOW = 1_000.0
FLEET = "fleet-a"
MODEL = "m"


def make_config(**rounds: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "fleet": FLEET,
            "log_url": "sqlite:///unused.db",
            "store_url": "file:///unused",
            "model": {"name": MODEL, "architecture": "logreg", "dataset": "unused"},
            "rounds": {"deadline_s": 60.0, "late_grace_s": 2.0} | rounds,
            "strategy": {"name": "fedavg", "server_lr": 1.0},
            "release": {"private_key": "/nonexistent/key.pem", "key_id": "k1"},
        }
    )


def initial_model() -> Arrays:
    return {
        "w": np.array([1.0, -1.0], dtype=np.float32),
        "b": np.array([0.5], dtype=np.float32),
        "steps": np.array([7], dtype=np.int64),
    }


def fresh_state(config: TrainerConfig, now: float = NOW) -> RoundState:
    return RoundState(
        version=0,
        round=first_round(config, now).model_dump(mode="json", by_alias=True),
        update_offsets={0: 0},
        model_sha256="unused",
        optimizer_sha256="unused",
    )


def coordinator(config: TrainerConfig, *, open_round: bool = True) -> Coordinator:
    coord = Coordinator(
        config, build_strategy(config.strategy), fresh_state(config), initial_model(), {}
    )
    if open_round:
        coord.next_round(NOW)
    return coord


_ids = iter(range(1, 1_000_000))


def update(
    coord: Coordinator,
    device: str,
    *,
    w: tuple[float, float] = (0.0, 0.0),
    b: float = 0.0,
    n: int = 1,
    round_id: str | None = None,
    base_version: int | None = None,
    message_id: str | None = None,
    loss: float | None = None,
) -> tuple[ModelUpdate, Arrays]:
    header = ModelUpdate(
        id=message_id or f"{next(_ids):032x}",
        fleet=FLEET,
        device_id=device,
        round_id=round_id or coord.round.round_id,
        model=MODEL,
        base_version=coord.round.base_version if base_version is None else base_version,
        num_examples=n,
        codec=CodecSpec(name="fp32"),
        metrics={} if loss is None else {"loss": loss},
    )
    tensors: Arrays = {
        "w": np.array(w, dtype=np.float32),
        "b": np.array([b], dtype=np.float32),
        "steps": np.array([1000], dtype=np.int64),  # an integer tensor never moves
    }
    return header, tensors


def send(coord: Coordinator, device: str, at_ms: int | None = None, **kwargs: Any) -> str | None:
    """Offer an update; returns the rejection reason (None when it counted)."""
    header, tensors = update(coord, device, **kwargs)
    timestamp = int(NOW * 1000) + 1 if at_ms is None else at_ms
    return coord.on_update(header, tensors, timestamp).reason


def status(coord: Coordinator, device: str, at: float, *, online: bool = True) -> None:
    coord.on_status(
        Status(fleet=FLEET, device_id=device, online=online, model=MODEL), int(at * 1000)
    )


def never_asked() -> bool:
    raise AssertionError("caught_up must not be asked before the deadline + grace")


# -- sync rounds: closing -----------------------------------------------------------------------


def test_first_round_is_a_placeholder_at_version_zero() -> None:
    placeholder = first_round(make_config(), NOW)
    assert (placeholder.base_version, placeholder.deadline) == (0, NOW)
    coord = coordinator(make_config())
    assert coord.round.round_id == "m-v000000-0"
    assert coord.round.deadline == NOW + 60.0
    assert coord.round.sampling.devices is None  # no status yet: devices select themselves
    assert coord.open_rounds == {"m-v000000-0": 0}


def test_sync_round_closes_when_every_listed_device_reported() -> None:
    config = make_config(min_updates=1)
    coord = coordinator(config, open_round=False)
    for device in ("dev-a", "dev-b", "dev-c"):
        status(coord, device, NOW)
    coord.next_round(NOW)
    assert coord.round.sampling.devices == ("dev-a", "dev-b", "dev-c")

    assert coord.decide(NOW, never_asked) == "wait"
    for device in ("dev-a", "dev-b"):
        assert send(coord, device) is None
        assert coord.decide(NOW, never_asked) == "wait"
    assert send(coord, "dev-c") is None
    assert coord.decide(NOW, never_asked) == "close"


def test_sync_round_closes_at_target_updates() -> None:
    coord = coordinator(make_config(min_updates=1, target_updates=2))
    assert send(coord, "dev-a") is None
    assert coord.decide(NOW, never_asked) == "wait"
    assert send(coord, "dev-b") is None
    assert coord.decide(NOW, never_asked) == "close"


def test_deadline_closes_with_enough_updates_once_caught_up() -> None:
    coord = coordinator(make_config(min_updates=2))
    send(coord, "dev-a")
    send(coord, "dev-b")
    deadline = coord.round.deadline
    assert coord.decide(deadline, never_asked) == "wait"
    assert coord.decide(deadline + 1.9, never_asked) == "wait"  # within late_grace_s
    assert coord.decide(deadline + 2.0, lambda: False) == "wait"  # unread updates may count
    assert coord.decide(deadline + 2.0, lambda: True) == "close"


def test_deadline_with_too_few_updates_abandons_and_retries() -> None:
    coord = coordinator(make_config(min_updates=2))
    send(coord, "dev-a")
    deadline = coord.round.deadline
    assert coord.decide(deadline + 2.0, lambda: False) == "wait"
    assert coord.decide(deadline + 2.0, lambda: True) == "abandon"

    coord.abandon()
    assert coord.accepted == 0
    retry = coord.next_round(deadline + 2.0)
    assert retry.round_id == "m-v000000-1"
    assert retry.base_version == 0
    assert coord.open_rounds == {"m-v000000-1": 0}
    coord.abandon()
    assert coord.next_round(deadline + 3.0).round_id == "m-v000000-2"


def test_update_after_the_deadline_is_rejected() -> None:
    coord = coordinator(make_config())
    deadline_ms = int(coord.round.deadline * 1000)
    assert send(coord, "dev-a", at_ms=deadline_ms) is None  # at the deadline still counts
    reason = send(coord, "dev-b", at_ms=deadline_ms + 1)
    assert reason is not None
    assert "deadline" in reason
    assert "m-v000000-0" in reason
    assert coord.accepted == 1


def test_device_not_listed_is_rejected() -> None:
    coord = coordinator(make_config(), open_round=False)
    status(coord, "dev-a", NOW)
    coord.next_round(NOW)
    reason = send(coord, "dev-z")
    assert reason is not None
    assert "'dev-z'" in reason
    assert "not selected" in reason
    assert send(coord, "dev-a") is None


def test_duplicates_are_rejected() -> None:
    coord = coordinator(make_config(target_updates=5))
    header, tensors = update(coord, "dev-a")
    assert coord.on_update(header, tensors, int(NOW * 1000)).accepted
    again = coord.on_update(header, tensors, int(NOW * 1000))
    assert again.reason is not None
    assert "already counted" in again.reason
    other_id = send(coord, "dev-a")  # a new message from the same device in the same round
    assert other_id is not None
    assert "already contributed" in other_id
    assert coord.accepted == 1


def test_update_for_another_round_is_rejected() -> None:
    coord = coordinator(make_config())
    reason = send(coord, "dev-a", round_id="m-v000000-init", base_version=0)
    assert reason is not None
    assert "not open" in reason


# -- closing: the FedAvg result -----------------------------------------------------------------


def test_close_returns_the_fedavg_result() -> None:
    coord = coordinator(make_config(target_updates=2))
    assert send(coord, "dev-a", w=(1.0, 2.0), b=0.5, n=1, loss=2.0) is None
    assert send(coord, "dev-b", w=(3.0, -2.0), b=1.5, n=3, loss=1.0) is None
    assert send(coord, "dev-c", at_ms=10**15) is not None  # rejected: counted in `rejected`
    assert coord.decide(NOW, never_asked) == "close"

    result = coord.close()
    # Weighted mean of deltas (weights 1 and 3): w = (1+9)/4, (2-6)/4 = 2.5, -1; b = (0.5+4.5)/4
    # The model moves by it (server_lr 1): w = [1, -1] + [2.5, -1]; b = 0.5 + 1.25.
    np.testing.assert_allclose(result.model["w"], [3.5, -2.0], rtol=1e-6)
    np.testing.assert_allclose(result.model["b"], [1.75], rtol=1e-6)
    assert result.model["steps"].dtype == np.int64
    np.testing.assert_array_equal(result.model["steps"], [7])  # int tensors keep their value
    assert all(result.model[n].dtype == np.float32 for n in ("w", "b"))
    assert (result.version, result.parent_version) == (1, 0)
    assert result.round_id == "m-v000000-0"
    assert result.device_ids == ("dev-a", "dev-b")
    assert len(result.update_ids) == 2
    assert (result.participants, result.rejected) == (2, 1)
    assert result.train_loss == pytest.approx((2.0 * 1 + 1.0 * 3) / 4)

    assert coord.version == 1
    assert coord.model is result.model
    assert coord.accepted == 0
    nxt = coord.next_round(NOW + 10)
    assert nxt.base_version == 1
    assert nxt.round_id == "m-v000001-0"
    assert coord.open_rounds == {"m-v000001-0": 1}


def test_a_round_after_an_abandoned_one_closes_with_attempt_reset() -> None:
    coord = coordinator(make_config(target_updates=1))
    coord.abandon()
    coord.next_round(NOW)
    assert coord.round.round_id == "m-v000000-1"
    send(coord, "dev-a", w=(1.0, 1.0))
    coord.close()
    assert coord.next_round(NOW).round_id == "m-v000001-0"


# -- selection from statuses --------------------------------------------------------------------


def test_only_online_devices_seen_within_the_ttl_are_listed() -> None:
    coord = coordinator(make_config(status_ttl_s=120.0), open_round=False)
    status(coord, "fresh", NOW - 5)
    status(coord, "edge-of-ttl", NOW - 120.0)
    status(coord, "stale", NOW - 120.5)
    status(coord, "offline", NOW - 1, online=False)
    status(coord, "went-offline", NOW - 50)
    status(coord, "went-offline", NOW - 10, online=False)  # the latest status counts
    coord.on_status(
        Status(fleet=FLEET, device_id="other-model", online=True, model="other"), int(NOW * 1000)
    )
    announcement = coord.next_round(NOW)
    assert announcement.sampling.devices == ("edge-of-ttl", "fresh")


def test_no_eligible_device_leaves_the_draw_to_the_devices() -> None:
    coord = coordinator(make_config(status_ttl_s=10.0), open_round=False)
    status(coord, "stale", NOW - 60)
    assert coord.next_round(NOW).sampling.devices is None


def test_selection_is_the_sampling_draw() -> None:
    config = make_config(sampling_rate=0.5, sampling_seed=11, min_updates=1)
    coord = coordinator(config, open_round=False)
    devices = [f"dev-{i:02d}" for i in range(40)]
    for device in devices:
        status(coord, device, NOW)
    announcement = coord.next_round(NOW)
    drawn = sorted(d for d in devices if draw(11, "m-v000000-0", d) < 0.5)
    assert 1 < len(drawn) < len(devices)
    assert announcement.sampling.devices == tuple(drawn)
    assert (announcement.sampling.rate, announcement.sampling.seed) == (0.5, 11)
    assert announcement.sampling.min_devices == 1


def test_selection_is_topped_up_to_min_updates_by_lowest_draw() -> None:
    config = make_config(sampling_rate=0.01, sampling_seed=3, min_updates=4)
    coord = coordinator(config, open_round=False)
    devices = [f"dev-{i:02d}" for i in range(20)]
    for device in devices:
        status(coord, device, NOW)
    announcement = coord.next_round(NOW)
    draws = {d: draw(3, "m-v000000-0", d) for d in devices}
    assert sum(v < 0.01 for v in draws.values()) < 4  # the rate alone would pick too few
    lowest = sorted(devices, key=lambda d: draws[d])[:4]
    assert announcement.sampling.devices == tuple(sorted(lowest))


# -- async mode ---------------------------------------------------------------------------------


def async_config(**rounds: Any) -> TrainerConfig:
    settings: dict[str, Any] = {
        "mode": "async",
        "buffer_size": 2,
        "max_staleness": 1,
        "staleness_exponent": 0.5,
    }
    return make_config(**(settings | rounds))


def test_async_closes_after_buffer_size_accepted() -> None:
    coord = coordinator(async_config(buffer_size=3))
    assert coord.round.round_id == "m-v000000-a"
    assert coord.round.mode == "async"
    for device in ("dev-a", "dev-b"):
        assert send(coord, device, at_ms=10**15) is None  # no deadline in async mode
        assert coord.decide(NOW + 10**6, never_asked) == "wait"
    assert send(coord, "dev-b") is not None  # a rejected update does not fill the buffer
    assert coord.decide(NOW, never_asked) == "wait"
    assert send(coord, "dev-c") is None
    assert coord.decide(NOW, never_asked) == "close"


def test_async_weights_stale_updates_down() -> None:
    coord = coordinator(async_config())
    round0 = coord.round.round_id
    send(coord, "dev-a", w=(0.0, 0.0), b=0.0)
    send(coord, "dev-b", w=(0.0, 0.0), b=0.0)
    coord.close()
    round1 = coord.next_round(NOW + 1).round_id
    assert coord.open_rounds[round0] == 0
    assert coord.open_rounds[round1] == 1

    # A fresh update (staleness 0, 2 examples) and one trained on version 0 (staleness 1,
    # 4 examples): weights 2 and 4 · 2^-0.5.
    assert send(coord, "dev-a", w=(1.0, 0.0), b=1.0, n=2, round_id=round1) is None
    stale = send(coord, "dev-c", w=(0.0, 4.0), b=-1.0, n=4, round_id=round0, base_version=0)
    assert stale is None
    assert coord.decide(NOW, never_asked) == "close"
    result = coord.close()

    fresh_w, stale_w = 2.0, 4.0 * 2.0**-0.5
    total = fresh_w + stale_w
    delta_w = (np.array([1.0, 0.0]) * fresh_w + np.array([0.0, 4.0]) * stale_w) / total
    delta_b = (1.0 * fresh_w - 1.0 * stale_w) / total
    np.testing.assert_allclose(result.model["w"], np.array([1.0, -1.0]) + delta_w, rtol=1e-6)
    np.testing.assert_allclose(result.model["b"], [0.5 + delta_b], rtol=1e-6)
    assert result.version == 2


def test_async_rejects_rounds_older_than_max_staleness() -> None:
    coord = coordinator(async_config(buffer_size=1))
    round0 = coord.round.round_id
    send(coord, "dev-a")
    coord.close()
    round1 = coord.next_round(NOW).round_id
    send(coord, "dev-a", round_id=round1)
    coord.close()
    round2 = coord.next_round(NOW).round_id
    assert set(coord.open_rounds) == {round1, round2}

    reason = send(coord, "dev-b", round_id=round0, base_version=0)  # staleness 2 > 1
    assert reason is not None
    assert "not open" in reason
    assert repr(round0) in reason
    assert send(coord, "dev-b", round_id=round1, base_version=1) is None  # staleness 1


def test_async_duplicates_stay_rejected_while_their_round_is_open() -> None:
    coord = coordinator(async_config(buffer_size=1))
    round0 = coord.round.round_id
    header, tensors = update(coord, "dev-a")
    assert coord.on_update(header, tensors, 0).accepted
    coord.close()
    coord.next_round(NOW)
    again = coord.on_update(header, tensors, 0)  # the same message, redelivered
    assert again.reason is not None
    assert "already counted" in again.reason
    later = send(coord, "dev-a", round_id=round0, base_version=0)
    assert later is not None
    assert "already contributed" in later


# -- checkpointed state -------------------------------------------------------------------------


def restarted(coord: Coordinator, config: TrainerConfig) -> Coordinator:
    fields = coord.state({0: 12, 1: 4}, {0: 3})
    state = RoundState.model_validate_json(
        RoundState.model_validate(
            fields | {"model_sha256": "unused", "optimizer_sha256": "unused"}
        ).model_dump_json()
    )
    assert state.update_offsets == {0: 12, 1: 4}
    assert state.status_offsets == {0: 3}
    return Coordinator(
        config, build_strategy(config.strategy), state, dict(coord.model), dict(coord.optimizer)
    )


def test_sync_state_round_trips_to_the_same_decisions() -> None:
    config = make_config(min_updates=2, status_ttl_s=1000.0)
    coord = coordinator(config, open_round=False)
    for device in ("dev-a", "dev-b", "dev-c"):
        status(coord, device, NOW)
    coord.next_round(NOW)
    coord.abandon()
    coord.next_round(NOW + 70)

    again = restarted(coord, config)
    assert again.round == coord.round
    assert (again.version, again.attempt, again.open_rounds) == (0, 1, coord.open_rounds)
    assert again.devices == coord.devices
    deadline = coord.round.deadline
    for c in (coord, again):
        assert send(c, "dev-a", message_id="a" * 32, at_ms=int(deadline * 1000)) is None
        assert send(c, "dev-z") is not None
        assert send(c, "dev-b", at_ms=int(deadline * 1000) + 1) is not None
        assert c.decide(deadline + 2.0, lambda: True) == "abandon"
        c.abandon()
    announced = [c.next_round(NOW + 200).model_dump(exclude={"id"}) for c in (coord, again)]
    assert announced[0] == announced[1]
    assert announced[0]["round_id"] == "m-v000000-2"
    assert announced[0]["sampling"]["devices"] == ("dev-a", "dev-b", "dev-c")


def test_async_state_round_trips_with_seen_ids() -> None:
    config = async_config(buffer_size=2)
    coord = coordinator(config)
    round0 = coord.round.round_id
    counted = update(coord, "dev-a", w=(1.0, 1.0), message_id="b" * 32)
    assert coord.on_update(*counted, 0).accepted
    send(coord, "dev-b", w=(2.0, 0.0))
    coord.close()
    round1 = coord.next_round(NOW).round_id

    again = restarted(coord, config)
    assert again.seen.entries() == coord.seen.entries()
    assert again.open_rounds == coord.open_rounds
    results = []
    for c in (coord, again):
        assert "already counted" in (c.on_update(*counted, 0).reason or "")
        assert "already contributed" in (send(c, "dev-b", round_id=round0, base_version=0) or "")
        assert send(c, "dev-c", w=(0.0, 3.0), n=2, message_id="c" * 32, round_id=round1) is None
        assert c.decide(NOW, never_asked) == "wait"
        assert send(c, "dev-d", w=(1.0, 0.0), n=5, message_id="d" * 32) is None
        assert c.decide(NOW, never_asked) == "close"
        results.append(c.close())
    for name in ("w", "b", "steps"):
        assert results[0].model[name].tobytes() == results[1].model[name].tobytes()


# -- SeenIds ------------------------------------------------------------------------------------


def test_seen_ids_are_kept_per_round() -> None:
    seen = SeenIds()
    seen.add("r1", "id-1", "r1/dev")
    seen.add("r2", "id-2")
    assert "id-1" in seen
    assert "r1/dev" in seen
    assert "id-3" not in seen
    restored = SeenIds(seen.entries())
    assert restored.entries() == seen.entries() == ["r1\tid-1", "r1\tr1/dev", "r2\tid-2"]
    restored.keep_only(["r2"])
    assert "id-1" not in restored
    assert "id-2" in restored
