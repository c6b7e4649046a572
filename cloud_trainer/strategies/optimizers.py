"""Server optimizers after Reddi et al. 2021, "Adaptive Federated Optimization".

The aggregated delta Δ is a pseudo-gradient that already points towards improvement, so every
step adds: x' = x + η·(something of Δ). No bias correction, as in the paper.

  FedAvg:     x' = x + η Δ                                     (no state)
  FedAvgM:    m = β m + Δ                                   x' = x + η m   (Hsu et al. 2019)
  FedAdagrad: m = β1 m + (1−β1) Δ;  v = v + Δ²                  x' = x + η m / (√v + τ)
  FedAdam:    m as above;           v = β2 v + (1−β2) Δ²
  FedYogi:    m as above;           v = v − (1−β2) Δ² sign(v − Δ²)

m and v start at 0 (the paper allows v₀ ≥ τ²; zeros match Flower's implementation, which the
trainer is benchmarked against, and keep `{}` a complete description of a fresh server). With
v₀ = 0 the first step moves each coordinate by about η(1−β1)/√(1−β2) in the direction of Δ, so
η for these optimizers is typically 0.01–0.1, not FedAvg's 1.0.

Steps are pure: new arrays out, inputs untouched. State is flat (``m/<tensor>``, ``v/<tensor>``,
float32) so a checkpoint can store it as tensors. Only floating-point model tensors move; others
(e.g. BatchNorm's int64 num_batches_tracked) keep their value, and every tensor keeps its dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.protocol import is_statistic
from cloud_trainer.strategies.base import Arrays, ArraysIn, StrategyError
from cloud_trainer.strategies.checks import label, real_array, require_finite

_F32 = npt.NDArray[np.float32]


def _check_hyper(name: str, value: float, *, low: float, high: float | None = None) -> None:
    """`value` finite and in [low, high) (or > low when high is None)."""
    ok = math.isfinite(value) and (value > low if high is None else low <= value < high)
    if not ok:
        bounds = f"> {low}" if high is None else f"in [{low}, {high})"
        raise StrategyError(f"{name} must be {bounds}, got {value!r}")


def _float_deltas(model: ArraysIn, delta: ArraysIn) -> dict[str, _F32]:
    """The deltas of the model's floating tensors as float32, checked against the model.

    Deltas for non-float model tensors are allowed and ignored; a float tensor without a delta,
    or a delta without a model tensor, is an error (a silent zero would hide a wiring bug).
    """
    unknown = sorted(delta.keys() - model.keys())
    if unknown:
        raise StrategyError(f"delta has tensors the model lacks: {unknown}")
    deltas: dict[str, _F32] = {}
    for name, value in model.items():
        if np.asarray(value).dtype.kind != "f":
            continue
        if name not in delta:
            raise StrategyError(f"{label(name)}: the model has it but the delta does not")
        d = real_array(name, delta[name])
        if d.shape != np.shape(value):
            raise StrategyError(
                f"{label(name)}: delta shape {list(d.shape)} differs from the model's "
                f"{list(np.shape(value))}"
            )
        require_finite(name, d)
        deltas[name] = d.astype(np.float32, copy=False)
    return deltas


def _apply(name: str, x: npt.NDArray[Any], step: npt.NDArray[np.floating[Any]]) -> npt.NDArray[Any]:
    """x + step in at least float32, returned in x's dtype; StrategyError if it overflows."""
    work = np.result_type(x.dtype, np.float32)
    moved: npt.NDArray[Any] = np.asarray(np.add(x, step, dtype=work), dtype=x.dtype)
    if not np.isfinite(moved).all():
        raise StrategyError(f"{label(name)}: the server step made it non-finite")
    return moved


def _copy_others(model: ArraysIn, moved: dict[str, npt.NDArray[Any]]) -> Arrays:
    """The new model in the model's order: moved float tensors, copies of everything else."""
    return {name: moved[name] if name in moved else np.array(x) for name, x in model.items()}


@dataclass(frozen=True)
class FedAvgOptimizer:
    """x' = x + server_lr·Δ; keeps no state. server_lr = 1.0 is plain FedAvg."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _check_hyper("server_lr", self.server_lr, low=0.0)

    def step(self, model: ArraysIn, delta: ArraysIn, state: ArraysIn) -> tuple[Arrays, Arrays]:
        if state:
            # Most likely a checkpoint from an adaptive optimizer: dropping it silently would
            # change the run's meaning, so say so.
            raise StrategyError(f"FedAvg keeps no server state, got entries {sorted(state)[:4]}")
        lr = np.float32(self.server_lr)
        with np.errstate(over="ignore"):  # an overflow is reported by _apply, by tensor name
            moved = {
                name: _apply(name, np.asarray(model[name]), d if is_statistic(name) else lr * d)
                for name, d in _float_deltas(model, delta).items()
            }
        return _copy_others(model, moved), {}


@dataclass(frozen=True)
class FedAvgMOptimizer:
    """Server momentum: m = β·m + Δ, x' = x + server_lr·m (Hsu et al. 2019, "Measuring the
    Effects of Non-Identical Data Distribution"). Deltas that keep pointing the same way across
    rounds add up, which is where label-skewed fleets lose most rounds to plain FedAvg; β = 0 is
    FedAvg. The momentum is state (``m/<tensor>``), checkpointed like the adaptive moments."""

    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_hyper("server_lr", self.server_lr, low=0.0)
        _check_hyper("momentum", self.momentum, low=0.0, high=1.0)

    def step(self, model: ArraysIn, delta: ArraysIn, state: ArraysIn) -> tuple[Arrays, Arrays]:
        deltas = _float_deltas(model, delta)
        moved: dict[str, npt.NDArray[Any]] = {
            name: _apply(name, np.asarray(model[name]), d)
            for name, d in deltas.items()
            if is_statistic(name)
        }
        deltas = {name: d for name, d in deltas.items() if not is_statistic(name)}
        if state:
            expected = {f"m/{name}" for name in deltas}
            if state.keys() != expected:
                raise StrategyError(
                    f"server state does not fit the model: missing "
                    f"{sorted(expected - state.keys())[:4]}, unexpected "
                    f"{sorted(state.keys() - expected)[:4]}"
                )
        beta, lr = np.float32(self.momentum), np.float32(self.server_lr)
        new_state: Arrays = {}
        for name, d in deltas.items():
            previous = _state_entry(state, f"m/{name}", d.shape) if state else np.zeros_like(d)
            with np.errstate(over="ignore", invalid="ignore"):  # reported by _apply, by name
                m = beta * previous + d
                moved[name] = _apply(name, np.asarray(model[name]), lr * m)
            if not np.isfinite(m).all():
                raise StrategyError(f"{label(name)}: the momentum overflowed float32")
            new_state[f"m/{name}"] = np.asarray(m, np.float32)
        return _copy_others(model, moved), new_state


@dataclass(frozen=True)
class _AdaptiveOptimizer(ABC):
    """The shared step of FedAdagrad/FedAdam/FedYogi; subclasses supply the rule for v."""

    server_lr: float
    beta1: float = 0.9
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_hyper("server_lr", self.server_lr, low=0.0)
        _check_hyper("beta1", self.beta1, low=0.0, high=1.0)
        _check_hyper("tau", self.tau, low=0.0)

    @abstractmethod
    def _second_moment(self, v: _F32, delta_sq: _F32) -> _F32:
        """The new v from the old v and Δ² (all float32, new array)."""

    def step(self, model: ArraysIn, delta: ArraysIn, state: ArraysIn) -> tuple[Arrays, Arrays]:
        deltas = _float_deltas(model, delta)
        # Running statistics take the devices' mean as it is: an adaptive step would move a
        # variance by about server_lr whatever its scale.
        moved: dict[str, npt.NDArray[Any]] = {
            name: _apply(name, np.asarray(model[name]), d)
            for name, d in deltas.items()
            if is_statistic(name)
        }
        deltas = {name: d for name, d in deltas.items() if not is_statistic(name)}
        moments = _read_state(state, deltas)
        b1, lr, tau = np.float32(self.beta1), np.float32(self.server_lr), np.float32(self.tau)
        new_state: Arrays = {}
        for name, d in deltas.items():
            m_old, v_old = moments[name]
            with np.errstate(over="ignore", invalid="ignore"):  # reported by _apply, by name
                m = b1 * m_old + (np.float32(1) - b1) * d
                v = self._second_moment(v_old, d * d)
                moved[name] = _apply(name, np.asarray(model[name]), lr * m / (np.sqrt(v) + tau))
            if not np.isfinite(v).all():  # m/∞ is a finite step, but the state would be unusable
                raise StrategyError(f"{label(name)}: the second moment v overflowed float32")
            # asarray: arithmetic on a 0-d tensor gives numpy scalars; the state holds arrays.
            new_state[f"m/{name}"] = np.asarray(m, np.float32)
            new_state[f"v/{name}"] = np.asarray(v, np.float32)
        return _copy_others(model, moved), new_state


@dataclass(frozen=True)
class FedAdagradOptimizer(_AdaptiveOptimizer):
    """v = v + Δ²: the step shrinks as squared deltas pile up."""

    def _second_moment(self, v: _F32, delta_sq: _F32) -> _F32:
        return v + delta_sq


@dataclass(frozen=True)
class FedAdamOptimizer(_AdaptiveOptimizer):
    """v = β2 v + (1−β2) Δ²: an exponential average of squared deltas."""

    beta2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_hyper("beta2", self.beta2, low=0.0, high=1.0)

    def _second_moment(self, v: _F32, delta_sq: _F32) -> _F32:
        b2 = np.float32(self.beta2)
        return b2 * v + (np.float32(1) - b2) * delta_sq


@dataclass(frozen=True)
class FedYogiOptimizer(_AdaptiveOptimizer):
    """v = v − (1−β2) Δ² sign(v − Δ²): like Adam, but v moves additively, so it reacts more
    slowly to a burst of large deltas. v stays ≥ 0: it only shrinks while above Δ², and then by
    less than the gap."""

    beta2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_hyper("beta2", self.beta2, low=0.0, high=1.0)

    def _second_moment(self, v: _F32, delta_sq: _F32) -> _F32:
        b2 = np.float32(self.beta2)
        new_v: _F32 = v - (np.float32(1) - b2) * delta_sq * np.sign(v - delta_sq)
        return new_v


def _read_state(state: ArraysIn, deltas: dict[str, _F32]) -> dict[str, tuple[_F32, _F32]]:
    """(m, v) per float tensor: zeros for an empty state, else exactly the expected entries."""
    if not state:
        return {name: (np.zeros_like(d), np.zeros_like(d)) for name, d in deltas.items()}
    expected = {f"{kind}/{name}" for name in deltas for kind in ("m", "v")}
    if state.keys() != expected:
        missing = sorted(expected - state.keys())[:4]
        unexpected = sorted(state.keys() - expected)[:4]
        raise StrategyError(
            f"server state does not fit the model: missing {missing}, unexpected {unexpected}"
        )
    moments: dict[str, tuple[_F32, _F32]] = {}
    for name, d in deltas.items():
        m, v = (_state_entry(state, f"{kind}/{name}", d.shape) for kind in ("m", "v"))
        moments[name] = (m, v)
    return moments


def _state_entry(state: ArraysIn, key: str, shape: tuple[int, ...]) -> _F32:
    """One state tensor as float32, checked for dtype, shape and finiteness."""
    value: npt.NDArray[Any] = np.asarray(state[key])
    where = f"state[{key!r}]"
    if value.dtype.kind != "f":
        raise StrategyError(f"{where}: dtype {value.dtype} is not a float type")
    if value.shape != shape:
        raise StrategyError(
            f"{where}: shape {list(value.shape)} differs from the model's {list(shape)}"
        )
    if not np.isfinite(value).all():
        raise StrategyError(f"{where}: holds NaN or infinity")
    as_f32: _F32 = value.astype(np.float32, copy=False)
    return as_f32
