"""The round coordinator's logic: which updates count, when a round closes, what comes next.

No I/O and no clock of its own: every input (an update, a status, the time, whether the log has
been read to its end) is handed in, so the same inputs always give the same decisions. That is
what lets a restarted trainer replay the log from its checkpoint and arrive at the very model an
uninterrupted one would have: inclusion in a sync round depends on the record's timestamp (the
moment the bridge received it), never on when the trainer happened to read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bus.protocol import ModelUpdate, RoundAnnouncement, Sampling, Status
from bus.protocol.selection import draw
from cloud_trainer.checkpoint import DeviceSeen, RoundState
from cloud_trainer.config import TrainerConfig
from cloud_trainer.strategies import Strategy, staleness_weight
from cloud_trainer.validation import Expected, Verdict, check_seed, check_update, model_spec

Arrays = dict[str, npt.NDArray[Any]]


class SeenIds:
    """Message ids and round/device keys counted in the rounds still open, per round."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._by_round: dict[str, set[str]] = {}
        for entry in entries:
            round_id, _, key = entry.partition("\t")
            self._by_round.setdefault(round_id, set()).add(key)

    def __contains__(self, key: object) -> bool:
        return any(key in keys for keys in self._by_round.values())

    def add(self, round_id: str, *keys: str) -> None:
        self._by_round.setdefault(round_id, set()).update(keys)

    def keep_only(self, rounds: Iterable[str]) -> None:
        wanted = set(rounds)
        self._by_round = {r: k for r, k in self._by_round.items() if r in wanted}

    def entries(self) -> list[str]:
        return sorted(f"{r}\t{k}" for r, keys in self._by_round.items() for k in keys)


@dataclass
class NewVersion:
    """A closed round's result: the new global model and where it came from."""

    version: int
    parent_version: int
    round_id: str
    model: Arrays
    update_ids: tuple[str, ...]
    device_ids: tuple[str, ...]
    participants: int
    rejected: int
    aggregation_s: float
    train_loss: float | None


@dataclass
class _Contributions:
    update_ids: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)
    losses: list[tuple[float, int]] = field(default_factory=list)
    rejected: int = 0


Decision = Literal["wait", "close", "abandon"]


class Coordinator:
    """Holds the global model, the open round(s) and the running aggregate."""

    def __init__(
        self,
        config: TrainerConfig,
        strategy: Strategy,
        state: RoundState,
        model: Mapping[str, npt.NDArray[Any]],
        optimizer: Mapping[str, npt.NDArray[Any]],
    ) -> None:
        self.config = config
        self.strategy = strategy
        self.version = state.version
        self.model: Arrays = dict(model)
        self.optimizer: Arrays = dict(optimizer)
        self.round = state.announcement()
        self.attempt = state.attempt
        self.open_rounds: dict[str, int] = dict(state.open_rounds) or {
            self.round.round_id: self.round.base_version
        }
        self.seen = SeenIds(state.seen)
        self.devices: dict[str, DeviceSeen] = dict(state.devices)
        self._spec = model_spec(self.model)
        self._floating = [n for n, s in self._spec.items() if s.floating]
        self._accumulator = strategy.new_accumulator()
        self._contributions = _Contributions()

    # -- inputs ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self.config.rounds.mode

    @property
    def accepted(self) -> int:
        return self._accumulator.count

    def expected(self) -> Expected:
        return Expected(
            fleet=self.config.fleet,
            model=self.config.model.name,
            rounds=self.open_rounds,
            spec=self._spec,
            max_norm=self.config.validation.max_norm,
        )

    def on_update(
        self, header: ModelUpdate, tensors: Mapping[str, npt.NDArray[Any]], timestamp_ms: int
    ) -> Verdict:
        """Validate and, if it counts, add the update to the running aggregate."""
        verdict = self._verdict(header, tensors, timestamp_ms)
        if not verdict.accepted:
            self._contributions.rejected += 1
            return verdict
        weight = float(header.num_examples)
        if self.mode == "async":
            weight *= staleness_weight(
                self.version - header.base_version, self.config.rounds.staleness_exponent
            )
        self._accumulator.add({name: tensors[name] for name in self._floating}, weight, finite=True)
        self.seen.add(header.round_id, header.id, f"{header.round_id}/{header.device_id}")
        self._contributions.update_ids.append(header.id)
        self._contributions.device_ids.append(header.device_id)
        loss = header.metrics.get("loss_after", header.metrics.get("loss"))
        if loss is not None:
            self._contributions.losses.append((loss, header.num_examples))
        return verdict

    def _verdict(
        self, header: ModelUpdate, tensors: Mapping[str, npt.NDArray[Any]], timestamp_ms: int
    ) -> Verdict:
        if self.mode == "sync":
            if timestamp_ms > self.round.deadline * 1000:
                return Verdict(
                    f"arrived after round {header.round_id!r}'s deadline "
                    f"({timestamp_ms / 1000:.3f} > {self.round.deadline:.3f})"
                )
            listed = self.round.sampling.devices
            if (
                header.round_id == self.round.round_id
                and listed is not None
                and header.device_id not in listed
            ):
                return Verdict(f"device {header.device_id!r} was not selected for this round")
        return check_update(header, tensors, self.expected(), self.seen)

    def on_status(self, status: Status, timestamp_ms: int) -> None:
        if status.model is not None and status.model != self.config.model.name:
            return
        self.devices[status.device_id] = DeviceSeen(
            last_seen_ms=timestamp_ms, online=status.online, model_version=status.model_version
        )

    # -- decisions ------------------------------------------------------------------------

    def decide(self, now: float, caught_up: Callable[[], bool]) -> Decision:
        """Whether the open round (sync) or buffer (async) is ready to become a version.

        `caught_up` (has the log been read to its end?) is asked only once a deadline passed:
        a round closes on its deadline only when no update it could still count is unread.
        """
        rounds = self.config.rounds
        count = self._accumulator.count
        if self.mode == "async":
            return "close" if count >= rounds.buffer_size else "wait"
        listed = self.round.sampling.devices
        if listed is not None and count >= len(listed) and count >= 1:
            return "close"
        if rounds.target_updates is not None and count >= rounds.target_updates:
            return "close"
        if now < self.round.deadline + rounds.late_grace_s or not caught_up():
            return "wait"
        return "close" if count >= rounds.min_updates else "abandon"

    def close(self) -> NewVersion:
        """Aggregate, step the server optimizer, and move to the next version."""
        started = time.perf_counter()
        delta = self._accumulator.result()
        floating = {name: self.model[name] for name in self._floating}
        stepped, self.optimizer = self.strategy.optimizer.step(floating, delta, self.optimizer)
        model = dict(self.model)
        for name in self._floating:
            model[name] = np.asarray(stepped[name], dtype=self.model[name].dtype)
        elapsed = time.perf_counter() - started
        contributions = self._contributions
        result = NewVersion(
            version=self.version + 1,
            parent_version=self.version,
            round_id=self.round.round_id,
            model=model,
            update_ids=tuple(contributions.update_ids),
            device_ids=tuple(contributions.device_ids),
            participants=self._accumulator.count,
            rejected=contributions.rejected,
            aggregation_s=elapsed,
            train_loss=_weighted_mean(contributions.losses),
        )
        self.model = model
        self.version += 1
        self.attempt = 0
        self._reset()
        return result

    def adopt(self, model: Mapping[str, npt.NDArray[Any]], round_id: str) -> NewVersion:
        """Parameters trained elsewhere (a DDP job's seed) become the next version.

        The open round is dropped: its updates are deltas against the old base and would move
        the seed somewhere nobody trained towards. Server optimizer moments go too, for the same
        reason. Raises ValidationError naming the first tensor that does not fit the model.
        """
        check_seed(self._spec, model)
        result = NewVersion(
            version=self.version + 1,
            parent_version=self.version,
            round_id=round_id,
            model={name: np.array(model[name], dtype=x.dtype) for name, x in self.model.items()},
            update_ids=(),
            device_ids=(),
            participants=0,
            rejected=0,
            aggregation_s=0.0,
            train_loss=None,
        )
        self.model = result.model
        self.version += 1
        self.attempt = 0
        self.optimizer = {}
        self.open_rounds = {}
        self._reset()
        return result

    def abandon(self) -> None:
        """A sync round that missed its deadline with too few updates: try again."""
        self.attempt += 1
        self._reset()

    def _reset(self) -> None:
        self._accumulator = self.strategy.new_accumulator()
        self._contributions = _Contributions()

    def next_round(self, now: float) -> RoundAnnouncement:
        """Announce the next round at the current version and make it the open one."""
        rounds = self.config.rounds
        suffix = "a" if self.mode == "async" else str(self.attempt)
        round_id = f"{self.config.model.name}-v{self.version:06d}-{suffix}"
        sampling = Sampling(
            rate=rounds.sampling_rate, min_devices=rounds.min_updates, seed=rounds.sampling_seed
        )
        if self.mode == "sync":
            chosen = self._select(round_id, now)
            if chosen is not None:
                sampling = sampling.model_copy(update={"devices": chosen})
        self.round = RoundAnnouncement(
            fleet=self.config.fleet,
            round_id=round_id,
            model=self.config.model.name,
            base_version=self.version,
            mode=rounds.mode,
            deadline=now + rounds.deadline_s,
            training=rounds.training,
            sampling=sampling,
            created_at=now,
        )
        if self.mode == "async":
            self.open_rounds[round_id] = self.version
            oldest = self.version - rounds.max_staleness
            self.open_rounds = {r: v for r, v in self.open_rounds.items() if v >= oldest}
        else:
            self.open_rounds = {round_id: self.version}
        self.seen.keep_only(self.open_rounds)
        return self.round

    def _select(self, round_id: str, now: float) -> tuple[str, ...] | None:
        """Eligible devices drawn by the sampling rate (topped up to min_updates), or None
        when no device has reported yet: then devices select themselves by the same draw."""
        rounds = self.config.rounds
        horizon_ms = (now - rounds.status_ttl_s) * 1000
        eligible = sorted(
            d for d, seen in self.devices.items() if seen.online and seen.last_seen_ms >= horizon_ms
        )
        if not eligible:
            return None
        ranked = sorted(eligible, key=lambda d: (draw(rounds.sampling_seed, round_id, d), d))
        chosen = [
            d for d in ranked if draw(rounds.sampling_seed, round_id, d) < rounds.sampling_rate
        ]
        if len(chosen) < rounds.min_updates:
            chosen = ranked[: rounds.min_updates]
        return tuple(sorted(chosen))

    # -- checkpoint -----------------------------------------------------------------------

    def state(
        self,
        update_offsets: Mapping[int, int],
        status_offsets: Mapping[int, int],
        seed_offsets: Mapping[int, int] | None = None,
    ) -> dict[str, Any]:
        """The round state as `RoundState` fields (hashes are added by the checkpoint store)."""
        return {
            "version": self.version,
            "round": self.round.model_dump(mode="json", by_alias=True),
            "attempt": self.attempt,
            "open_rounds": dict(self.open_rounds),
            "seen": self.seen.entries(),
            "update_offsets": dict(update_offsets),
            "status_offsets": dict(status_offsets),
            "seed_offsets": dict(seed_offsets or {}),
            "devices": {d: s.model_dump() for d, s in sorted(self.devices.items())},
        }


def _weighted_mean(values: list[tuple[float, int]]) -> float | None:
    total = sum(n for _, n in values)
    return sum(v * n for v, n in values) / total if total else None


def first_round(config: TrainerConfig, now: float) -> RoundAnnouncement:
    """A placeholder for a fresh start; `Coordinator.next_round` replaces it before use."""
    return RoundAnnouncement(
        fleet=config.fleet,
        round_id=f"{config.model.name}-v000000-init",
        model=config.model.name,
        base_version=0,
        deadline=now,
        created_at=now,
    )
