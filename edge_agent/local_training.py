"""One round of training on the device: plain SGD over the buffered window, returning the delta.

Imported only where the `edge-train` extra (torch) is installed. The loop is kept as lean as a
hand-written torch loop: the window becomes tensors once, each epoch gathers one shuffled copy
and steps over contiguous slices of it, and the SGD update (with the FedProx pull, when asked
for) is a couple of fused `_foreach` calls instead of an optimizer object's bookkeeping. Losses
are measured outside the timed loop, in large no-grad chunks.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from torch import nn

from bus.errors import ConfigError, FleetlearnError, ValidationError
from bus.protocol import Privacy, TrainingConfig
from edge_agent.buffer import Window
from edge_agent.privacy import PrivacyAccountant, clip_and_noise, global_norm
from models.params import get_parameters, parameter_delta

EVAL_CHUNK = 4096  # rows per no-grad forward when measuring the loss: large, but bounded memory


class TrainingInterrupted(FleetlearnError):
    """The stop event was set between two steps; nothing was produced."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        super().__init__(f"local training stopped after {steps} step(s)")


class TrainingDiverged(FleetlearnError):
    """The loss or the update became NaN or Inf (usually: the learning rate is too high)."""


@dataclass(frozen=True)
class LocalResult:
    delta: dict[str, npt.NDArray[Any]]
    """new − base for float entries (float32); the new value for non-float ones."""
    num_examples: int
    """Rows in the window (the weight of this update in a federated average)."""
    steps: int
    metrics: dict[str, float]
    """loss_before, loss_after and accuracy_after over the window (eval mode), seconds and
    samples_per_s of the training loop alone, update_norm before clipping."""
    privacy: Privacy | None
    """Cumulative (ε, δ) of the device after this release; None when not accounted."""


def train_local(
    module: nn.Module,
    window: Window,
    config: TrainingConfig,
    *,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    accountant: PrivacyAccountant | None = None,
    stop: threading.Event | None = None,
    noise_seed: int | None = None,
) -> LocalResult:
    """Train a copy of `module` on `window`; `module` itself is left unchanged.

    Features (n, d) are reshaped to (n, *input_shape) when given; a model that starts with an
    embedding gets them as int64 token ids. `config.epochs` shuffled passes in `batch_size`
    batches, at most `max_steps` steps, plain SGD on cross-entropy, plus (mu/2)·||w − w_base||²
    when `fedprox_mu` > 0. `seed` fixes shuffling and dropout (torch's global RNG is left as it
    was). With `clip_norm` the delta is clipped and noised (see edge_agent.privacy); the noise
    comes from OS entropy unless `noise_seed` is given (tests only: known noise is no noise), and
    every release is recorded in `accountant` before this returns. Raises TrainingInterrupted
    when `stop` is set between steps, TrainingDiverged on a NaN/Inf loss or update.
    """
    if config.noise_multiplier and config.clip_norm is None:
        raise ConfigError("noise_multiplier needs clip_norm: the noise is scaled to the clip norm")
    work = copy.deepcopy(module)
    base = get_parameters(work)
    inputs, labels = _tensors(work, window, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss_before, _ = _evaluate(work, inputs, labels)
        started = time.perf_counter()
        steps, samples = _fit(work, inputs, labels, config, seed, stop)
        seconds = time.perf_counter() - started
        loss_after, accuracy_after = _evaluate(work, inputs, labels)
    if not math.isfinite(loss_after):
        raise TrainingDiverged(f"loss after {steps} steps is {loss_after}; lower learning_rate")
    delta = parameter_delta(get_parameters(work), base)
    noise = None
    if config.clip_norm is None:
        norm = global_norm(delta)
    else:
        rng = np.random.default_rng(noise_seed)
        delta, norm = clip_and_noise(delta, config.clip_norm, config.noise_multiplier, rng)
        noise = config.noise_multiplier
    # Every release is recorded: one without noise voids the guarantee for good (spend returns
    # None from then on), so a later noised round never reports an ε that the earlier leak broke.
    privacy = accountant.spend(noise) if accountant is not None else None
    if not math.isfinite(norm):
        raise TrainingDiverged(f"the update norm after {steps} steps is {norm}")
    metrics = {
        "loss_before": loss_before,
        "loss_after": loss_after,
        "accuracy_after": accuracy_after,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "update_norm": norm,
    }
    return LocalResult(delta, len(window), steps, metrics, privacy)


def _tensors(
    module: nn.Module, window: Window, input_shape: tuple[int, ...] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window as (inputs, int64 labels) on the module's device; shares memory where it can."""
    features = np.asarray(window.features)
    rows = features.shape[0] if features.ndim == 2 else 0
    if features.ndim != 2 or rows == 0:
        raise ValidationError(f"needs shape (n ≥ 1, d), got {list(features.shape)}", where="window")
    if not np.all(np.isfinite(features)):
        raise ValidationError("holds NaN or Inf", where="window.features")
    if input_shape is not None:
        if math.prod(input_shape) != features.shape[1]:
            raise ValidationError(
                f"{features.shape[1]} values per row do not fill input_shape {list(input_shape)}",
                where="window.features",
            )
        features = features.reshape(rows, *input_shape)
    first = next((p for p in module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    # torch.from_numpy shares memory and warns on read-only arrays (a buffer's may be): copy those
    writable = features.flags.writeable and features.flags.c_contiguous
    inputs = torch.from_numpy(features if writable else np.array(features, order="C"))
    if _takes_token_ids(module):
        if np.any(features != np.round(features)) or np.any(features < 0):
            raise ValidationError(
                "token ids must be non-negative integers", where="window.features"
            )
        inputs = inputs.to(torch.int64)
    elif first is not None and first.is_floating_point():
        inputs = inputs.to(first.dtype)
    return inputs.to(device), _labels(window.labels, rows).to(device)


def _labels(values: npt.NDArray[Any] | None, rows: int) -> torch.Tensor:
    if values is None:
        raise ValidationError(
            "the window has no labels; local training needs labelled samples",
            where="window.labels",
        )
    array = np.asarray(values)
    if array.shape != (rows,):
        raise ValidationError(f"shape {list(array.shape)} != [{rows}]", where="window.labels")
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
        raise ValidationError("class labels must be finite numbers", where="window.labels")
    as_int = array.astype(np.int64)
    if np.any(as_int != array) or np.any(as_int < 0):
        bad = array[(as_int != array) | (as_int < 0)][0]
        raise ValidationError(
            f"class labels must be non-negative integers (got {bad})", where="window.labels"
        )
    return torch.from_numpy(as_int)


def _takes_token_ids(module: nn.Module) -> bool:
    """True when the first module that owns parameters is an embedding (a text model)."""
    for sub in module.modules():
        if any(True for _ in sub.parameters(recurse=False)):
            return isinstance(sub, nn.Embedding | nn.EmbeddingBag)
    return False


def _evaluate(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all rows, in eval mode, without gradients."""
    module.eval()
    loss = torch.zeros((), dtype=torch.float64, device=labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    with torch.inference_mode():
        for x, y in zip(
            torch.split(inputs, EVAL_CHUNK), torch.split(labels, EVAL_CHUNK), strict=True
        ):
            logits = _logits(module, x, y)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=-1) == y).sum()
    rows = labels.shape[0]
    return float(loss) / rows, float(correct) / rows


def _logits(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's logits, with its shape complaints and out-of-range labels named."""
    try:
        logits: torch.Tensor = module(x)
    except (RuntimeError, IndexError) as exc:
        raise ValidationError(
            f"the model rejects rows of shape {list(x.shape[1:])}: {exc}", where="window.features"
        ) from exc
    if logits.ndim != 2:
        raise ValidationError(f"model output {list(logits.shape)} is not (rows, classes)")
    if int(y.max()) >= logits.shape[1]:
        raise ValidationError(
            f"label {int(y.max())} ≥ the model's {logits.shape[1]} classes", where="window.labels"
        )
    return logits


def _fit(
    module: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainingConfig,
    seed: int,
    stop: threading.Event | None,
) -> tuple[int, int]:
    """The SGD loop; returns (steps, samples trained on)."""
    params: list[torch.Tensor] = [p for p in module.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if config.fedprox_mu > 0 else []
    lr, mu = config.learning_rate, config.fedprox_mu
    steps = samples = 0
    module.train()
    for x, y in _batches(inputs, labels, config, seed):
        if stop is not None and stop.is_set():
            raise TrainingInterrupted(steps)
        torch.autograd.backward(F.cross_entropy(module(x), y))
        _sgd_step(params, anchors, lr, mu)
        steps += 1
        samples += y.shape[0]
    return steps, samples


def _batches(
    inputs: torch.Tensor, labels: torch.Tensor, config: TrainingConfig, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches, epoch after epoch, stopping after `max_steps` in total.

    One gather per epoch, then contiguous views: cheaper than indexing every batch.
    """
    rows, size = labels.shape[0], config.batch_size
    limit = config.max_steps if config.max_steps is not None else math.inf
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(rows, generator=generator).to(labels.device)
        x, y = inputs[order], labels[order]
        for start in range(0, rows, size):
            if steps >= limit:
                return
            yield x[start : start + size], y[start : start + size]
            steps += 1


@torch.no_grad()
def _sgd_step(
    params: list[torch.Tensor], anchors: list[torch.Tensor], lr: float, mu: float
) -> None:
    """w ← w − lr·(∇ + mu·(w − w_base)); gradients are then dropped, as zero_grad(None) does.

    The FedProx term's gradient is added directly rather than through autograd: the same
    update, without building (mu/2)·||w − w_base||² into the graph every step.
    """
    grads = [p.grad for p in params]
    if any(g is None for g in grads):  # a parameter this batch did not reach: leave it be
        live = [i for i, g in enumerate(grads) if g is not None]
        params = [params[i] for i in live]
        anchors = [anchors[i] for i in live] if anchors else []
    present = [g for g in grads if g is not None]
    if mu > 0:
        torch._foreach_add_(present, torch._foreach_sub(params, anchors), alpha=mu)
    torch._foreach_add_(params, present, alpha=-lr)
    for p in params:
        p.grad = None
