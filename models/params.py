"""Model parameters as an ordered name → numpy array mapping: exactly what an update carries.

What travels is the whole `module.state_dict()`, in its order and under its keys: learned
parameters and buffers alike. Floating entries (weights, biases, BatchNorm running mean/var)
travel as float32, whatever the module's own float dtype, because that is the wire's dtype for
deltas. Other entries (BatchNorm's int64 `num_batches_tracked`) travel raw, in their own
dtype: the codecs pass non-float tensors through untouched, and a delta of a counter means
nothing, so deltas carry the new value of those instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bus.errors import ValidationError

Params = dict[str, npt.NDArray[Any]]
WIRE_FLOAT = np.dtype(np.float32)


def get_parameters(module: nn.Module) -> Params:
    """A copy of every state_dict entry (float → float32), C-contiguous, in state_dict order."""
    params: Params = {}
    for name, tensor in module.state_dict().items():
        if "#" in name:
            raise ValidationError(
                "'#' is reserved for codec side tensors", where=f"params[{name!r}]"
            )
        value = tensor.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        elif value.is_complex():
            raise ValidationError("complex tensors have no wire dtype", where=f"params[{name!r}]")
        params[name] = np.array(value.numpy(), order="C", copy=True)
    return params


def _expected_dtype(tensor: torch.Tensor) -> np.dtype[Any]:
    if tensor.is_floating_point():
        return WIRE_FLOAT
    return np.dtype(torch.empty(0, dtype=tensor.dtype).numpy().dtype)


def _check_names(expected: Mapping[str, Any], given: Mapping[str, Any], what: str) -> None:
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}" + (" …" if len(missing) > 5 else ""))
        if extra:
            parts.append(f"unexpected {extra[:5]}" + (" …" if len(extra) > 5 else ""))
        raise ValidationError("; ".join(parts), where=what)


def _check_array(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    where = f"params[{name!r}]"
    if not isinstance(value, np.ndarray):
        raise ValidationError(f"must be a numpy array, got {type(value).__name__}", where=where)
    if value.shape != shape:
        raise ValidationError(f"shape {list(value.shape)} != expected {list(shape)}", where=where)
    if value.dtype != dtype:
        raise ValidationError(f"dtype {value.dtype} != expected {dtype}", where=where)


def set_parameters(module: nn.Module, params: Mapping[str, npt.NDArray[Any]]) -> None:
    """Copy `params` into `module` (all or nothing).

    Strict: the names must be exactly the state_dict keys, each array of the same shape, float
    entries float32 and the others the module's own dtype, or a ValidationError names the
    tensor. Everything is checked before anything is written, so a bad mapping leaves the
    module untouched. Arrays may be read-only views (as `decode_message` returns them).
    """
    state = module.state_dict()
    _check_names(state, params, "params")
    for name, tensor in state.items():
        _check_array(name, params[name], tuple(tensor.shape), _expected_dtype(tensor))
    with torch.no_grad():
        for name, tensor in state.items():
            source = torch.from_numpy(np.array(params[name], order="C", copy=True))
            tensor.copy_(source)  # state_dict tensors share storage with the module's


def parameter_delta(
    new: Mapping[str, npt.NDArray[Any]], base: Mapping[str, npt.NDArray[Any]]
) -> Params:
    """`new - base` per float tensor (float32); non-float tensors carry `new`'s value."""
    _check_names(base, new, "new")
    delta: Params = {}
    for name, value in new.items():
        other = base[name]
        _check_pair(name, value, other)
        if value.dtype.kind == "f":
            delta[name] = np.subtract(value, other, dtype=np.float32)
        else:
            delta[name] = np.array(value, copy=True)
    return delta


def apply_delta(
    base: Mapping[str, npt.NDArray[Any]], delta: Mapping[str, npt.NDArray[Any]]
) -> Params:
    """`base + delta` per float tensor (float32); non-float tensors take `delta`'s value."""
    _check_names(base, delta, "delta")
    result: Params = {}
    for name, value in base.items():
        change = delta[name]
        _check_pair(name, change, value)
        if value.dtype.kind == "f":
            result[name] = np.add(value, change, dtype=np.float32)
        else:
            result[name] = np.array(change, copy=True)
    return result


def _check_pair(name: str, value: npt.NDArray[Any], other: npt.NDArray[Any]) -> None:
    where = f"params[{name!r}]"
    if value.shape != other.shape:
        raise ValidationError(
            f"shapes differ: {list(value.shape)} vs {list(other.shape)}", where=where
        )
    if (value.dtype.kind == "f") != (other.dtype.kind == "f"):
        raise ValidationError(f"dtypes differ in kind: {value.dtype} vs {other.dtype}", where=where)
