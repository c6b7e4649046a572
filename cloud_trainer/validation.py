"""Whether an update may count: a pure function of the update and what the coordinator expects.

Every check names what was wrong, because the reason travels to the dead-letter topic and is
what an operator reads when a device misbehaves. The norm and the finiteness check share one
pass over the values (a dot product overflows to inf or turns NaN exactly when something is not
finite or absurdly large); the slower elementwise scan runs only to word the reason.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ValidationError
from bus.protocol import ModelUpdate


@dataclass(frozen=True)
class TensorShape:
    shape: tuple[int, ...]
    floating: bool


ModelSpec = Mapping[str, TensorShape]


def model_spec(params: Mapping[str, npt.NDArray[Any]]) -> dict[str, TensorShape]:
    """The names and shapes an update must match, from the global model."""
    return {
        name: TensorShape(tuple(value.shape), np.issubdtype(value.dtype, np.floating))
        for name, value in params.items()
    }


@dataclass(frozen=True)
class Expected:
    """What the coordinator accepts right now.

    `rounds` maps each open round id to its base version (one entry in sync mode; the last
    `max_staleness + 1` versions' rounds in async mode).
    """

    fleet: str
    model: str
    rounds: Mapping[str, int]
    spec: ModelSpec
    max_norm: float | None = None


@dataclass(frozen=True)
class Verdict:
    """`reason` is None when the update counts; `norm` is its L2 norm when it was computed."""

    reason: str | None
    norm: float | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def check_update(
    header: ModelUpdate,
    tensors: Mapping[str, npt.NDArray[Any]],
    expected: Expected,
    seen: Container[str],
) -> Verdict:
    """The first reason `header` + `tensors` must not count, or an accepting verdict."""
    reason = _check_header(header, expected, seen)
    if reason is not None:
        return Verdict(reason)
    reason = _check_tensors(tensors, expected.spec)
    if reason is not None:
        return Verdict(reason)
    return _check_values(tensors, expected.max_norm)


def _check_header(header: ModelUpdate, expected: Expected, seen: Container[str]) -> str | None:
    if header.fleet != expected.fleet:
        return f"fleet {header.fleet!r} is not this trainer's fleet {expected.fleet!r}"
    if header.model != expected.model:
        return f"model {header.model!r} is not this trainer's model {expected.model!r}"
    base = expected.rounds.get(header.round_id)
    if base is None:
        open_rounds = ", ".join(sorted(expected.rounds)) or "none"
        return f"round {header.round_id!r} is not open (open: {open_rounds})"
    if header.base_version != base:
        return (
            f"base_version {header.base_version} does not match round {header.round_id!r}'s "
            f"base version {base}"
        )
    if header.id in seen:
        return f"message id {header.id} was already counted"
    if f"{header.round_id}/{header.device_id}" in seen:
        return f"device {header.device_id!r} already contributed to round {header.round_id!r}"
    return None


def _check_tensors(tensors: Mapping[str, npt.NDArray[Any]], spec: ModelSpec) -> str | None:
    if list(tensors) != list(spec):
        missing = [name for name in spec if name not in tensors]
        extra = [name for name in tensors if name not in spec]
        if missing or extra:
            return f"tensor names differ from the model: missing {missing[:5]}, extra {extra[:5]}"
        return "tensor order differs from the model's"
    for name, want in spec.items():
        value = tensors[name]
        if tuple(value.shape) != want.shape:
            return f"tensors[{name!r}]: shape {list(value.shape)}, the model has {list(want.shape)}"
        if want.floating and not np.issubdtype(value.dtype, np.floating):
            return f"tensors[{name!r}]: dtype {value.dtype}, the model's tensor is floating point"
    return None


def _check_values(tensors: Mapping[str, npt.NDArray[Any]], max_norm: float | None) -> Verdict:
    total = 0.0
    for value in tensors.values():
        if not np.issubdtype(value.dtype, np.floating) or not value.size:
            continue
        # float16 squares overflow past a norm of 256: sum them in float32 like the aggregate.
        flat = value.reshape(-1).astype(np.result_type(value.dtype, np.float32), copy=False)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
            total += float(np.dot(flat, flat))
    if not math.isfinite(total):
        for name, value in tensors.items():
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                return Verdict(f"tensors[{name!r}] holds NaN or Inf")
        return Verdict("the update's norm overflows its floating-point type: absurdly large values")
    norm = math.sqrt(total)
    if max_norm is not None and norm > max_norm:
        return Verdict(f"norm {norm:.6g} is over the bound {max_norm:.6g}", norm)
    return Verdict(None, norm)


def check_seed(spec: ModelSpec, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
    """A seed must be the whole model: every tensor, each of its shape and kind, floats finite.

    Stricter than an update: a seed replaces the model, so nothing may be missing or extra.
    """
    missing, extra = sorted(spec.keys() - tensors.keys()), sorted(tensors.keys() - spec.keys())
    if missing or extra:
        raise ValidationError(
            f"a seed must hold exactly the model's tensors: missing {missing[:5]}, "
            f"unexpected {extra[:5]}",
            where="seed.tensors",
        )
    for name, shape in spec.items():
        value = np.asarray(tensors[name])
        where = f"seed.tensors[{name!r}]"
        if tuple(value.shape) != shape.shape:
            raise ValidationError(
                f"shape {list(value.shape)}, the model's is {list(shape.shape)}", where=where
            )
        floating = np.issubdtype(value.dtype, np.floating)
        if floating != shape.floating or value.dtype.kind not in "fiub":
            raise ValidationError(
                f"dtype {value.dtype} does not fit the model's "
                f"{'floating' if shape.floating else 'integer'} tensor",
                where=where,
            )
        if floating and not np.isfinite(value).all():
            raise ValidationError("holds NaN or Inf", where=where)
