"""FedAvg from wire bytes to the new global model: ours against both Flower paths and numpy.

    .venv/bin/python -m bench.aggregate [--params 1000000 --params 10000000] [--updates 100]
                                        [--repeats 3] [--out bench/results/aggregate.json]

For each model size (a text classifier's tensors: an embedding table holding nearly every
parameter, a dense layer, a layer norm, a head; seeded random fp32 deltas, weights are seeded
example counts) the same updates go through four paths (and one diagnostic). Each path's input is
built before the clock starts and is what its receiver holds when it begins; the clock covers:

ours           per update `bus.protocol.decode_message(data)` (frame, strict header, XXH3-128 of
               the payload, zero-copy tensor views, codec check) -> `cloud_trainer.validation.
               check_update(header, tensors, expected, seen)` (round, duplicates, names, shapes,
               dtypes, finite, norm) -> `accumulator.add(tensors, weight=num_examples,
               finite=True)` of `build_strategy(StrategyConfig()).new_accumulator()`
               (streaming FedAvg; finiteness already proven by the norm pass); then
               `accumulator.result()` and `strategy.optimizer.step(model, delta, {})`.
               Input: the bytes of `encode_update(ModelUpdate(...), delta)`, codec fp32.
flower_legacy  `flwr.server.strategy.aggregate.aggregate_inplace(results)`, which is what
               `flwr.server.strategy.FedAvg.aggregate_fit` runs (inplace=True, its default): it
               calls `parameters_to_ndarrays` (np.load per tensor) on each `FitRes` and sums
               scaled copies in place. Input: `results`, a list of `(None, FitRes)`, each FitRes
               holding `ndarrays_to_parameters(delta)` (the proxy is never read by aggregation).
               Not timed: aggregate_fit's `ndarrays_to_parameters` of the result (serializing the
               new model to send it out; ours returns arrays too).
flower_message per reply `flwr.supercore.inflatable.inflatable_utils.inflate_object_from_contents`
               (what the ServerApp's grid does with the object contents it pulled: Message,
               RecordDict, ArrayRecord, Array, 5 MB ArrayChunks), then
               `flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords(contents,
               "num-examples")`, the call inside `flwr.serverapp.strategy.FedAvg.aggregate_train`
               (`Array.numpy()` = np.load per tensor per reply, weighted sum, and the result
               serialized back into an `ArrayRecord`, which is Flower's form of the new model).
               Input: per reply, the dict object id -> deflated bytes of the reply `Message`
               (`obj.deflate()` of every nested object, as the ClientApp pushes them).
               Not timed: `_check_and_log_replies` (metadata only) and metric averaging.
numpy_floor    the weighted sum of the delta arrays already in memory: per tensor, blocks of
               64 Ki floats, `np.multiply(a, w, out=tmp)` then `np.add(acc, tmp, out=acc)` (the
               fastest plain-numpy form measured here; unblocked it is ~1.5x slower), / Σw.

Flower returns the averaged arrays (its clients send weights, so the average is the model); the
bench adds them to the global model after the clock to compare. Every path's new model must
equal a float64 reference to float32 tolerance, or the bench refuses to report (ResultMismatch).

Time: best of `--repeats`, each after a gc.collect(). Memory: one fresh interpreter per (path,
size, number of updates), which builds the inputs, then measures the timed section alone:
(a) RSS high-water mark (VmHWM reset through /proc/self/clear_refs after the inputs exist)
minus the RSS before it; (b) tracemalloc's peak over the section (numpy's buffers are traced;
tracing starts after the inputs exist, so they are not counted). Every path runs with 25 and
100 updates, to show that ours' working memory does not grow with their number.

flwr 1.42 is not in the `dev` extra (its pins would downgrade typer, rich, protobuf and amqtt
here); BENCHMARKS.md says how to put it beside the project for this bench.

Writes bench/results/aggregate.json; prints the table, where ours' and Flower's time goes, the
goals (ours >= 3x faster than the faster Flower path as measured in the same run, within 2x of
the numpy floor, working memory flat in the number of updates) and the ratios vs Flower last.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash
from rich.console import Console
from rich.table import Table

from bench.cpu import cpu_model
from bus.protocol import CodecSpec, ModelUpdate, decode_message, encode_update
from bus.protocol.frame import unpack_frame
from cloud_trainer.strategies import StrategyConfig, build_strategy
from cloud_trainer.validation import Expected, check_update, model_spec

RESULTS = Path(__file__).parent / "results" / "aggregate.json"
ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
SIDES = ("ours", "flower_legacy", "flower_message", "numpy_floor")
FLOWER = ("flower_legacy", "flower_message")
FLEET, MODEL, ROUND, BASE_VERSION = "bench", "bench-model", "r1", 1
WEIGHT_KEY = "num-examples"  # flwr.serverapp.strategy.FedAvg's default weighted_by_key
POOL = 4  # distinct random deltas; update i is pool[i % POOL] times its own scale
BLOCK = 1 << 16  # numpy floor: 64 Ki floats (256 KiB) per block keeps `tmp` in cache
# A float32 sum of 100 scaled deltas against a float64 reference: rounding stays near 1e-7 of
# the values (~0.1 here); a wrong weight or a dropped update moves them by 1e-4 or more.
RTOL, ATOL = 1e-5, 1e-6

F32 = npt.NDArray[np.float32]
Arrays = dict[str, F32]


class ResultMismatch(RuntimeError):
    """A path's new model differs from the reference: its timing means nothing."""


@dataclass(frozen=True)
class Config:
    params: tuple[int, ...] = (1_000_000, 10_000_000)
    updates: int = 100
    repeats: int = 3
    flat_updates: int = 25
    """The smaller number of updates of the memory-flatness check."""
    sides: tuple[str, ...] = SIDES
    memory: bool = True
    seed: int = 0


def layer_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """A text classifier's tensors at about `params` parameters (the embedding takes the rest)."""
    width = max(8, 2 ** int(np.log2(np.sqrt(params) / 4)))
    classes = 10
    fixed = width * width + 3 * width + classes * width + classes
    rows = max(1, (params - fixed) // width)
    return {
        "embedding.weight": (rows, width),
        "dense.weight": (width, width),
        "dense.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
        "head.weight": (classes, width),
        "head.bias": (classes,),
    }


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> F32:
    values = rng.random(shape, dtype=np.float32)
    values -= np.float32(0.5)
    values *= np.float32(2 * scale)
    return values


@dataclass(frozen=True)
class Case:
    """One model size: the global model and a seeded way to make update i's delta and weight."""

    shapes: dict[str, tuple[int, ...]]
    model: Arrays
    pool: list[Arrays] = field(repr=False)
    scales: list[np.float32]
    weights: list[int]

    @classmethod
    def build(cls, params: int, updates: int, seed: int = 0) -> Case:
        shapes = layer_shapes(params)
        rng = np.random.default_rng(seed)
        model = {name: _uniform(rng, shape, 0.1) for name, shape in shapes.items()}
        # Drawing 10M floats takes ~0.1 s here; a pool scaled per update keeps input building
        # to one multiply per update while every update still differs.
        pool = [{n: _uniform(rng, s, 0.01) for n, s in shapes.items()} for _ in range(POOL)]
        scales = [np.float32(s) for s in rng.uniform(0.5, 1.5, updates)]
        weights = [int(w) for w in rng.integers(16, 1025, updates)]
        return cls(shapes, model, pool, scales, weights)

    @property
    def params(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes.values())

    @property
    def updates(self) -> int:
        return len(self.weights)

    def delta(self, i: int) -> Arrays:
        return {name: a * self.scales[i] for name, a in self.pool[i % POOL].items()}

    def expected(self) -> Expected:
        spec = model_spec(self.model)
        return Expected(FLEET, MODEL, rounds={ROUND: BASE_VERSION}, spec=spec, max_norm=1e4)


def reference_model(case: Case, updates: int) -> dict[str, npt.NDArray[np.float64]]:
    """The new model in float64: model + Σ wᵢΔᵢ / Σ wᵢ over the first `updates` updates."""
    sums = {name: np.zeros(shape) for name, shape in case.shapes.items()}
    for i in range(updates):
        for name, value in case.delta(i).items():
            sums[name] += case.weights[i] * value.astype(np.float64)
    total = float(sum(case.weights[:updates]))
    return {name: case.model[name] + sums[name] / total for name in sums}


def check_result(side: str, got: Mapping[str, F32], reference: Mapping[str, Any]) -> float:
    """The largest absolute difference from the reference; ResultMismatch beyond tolerance."""
    if list(got) != list(reference):
        raise ResultMismatch(f"{side}: tensors {list(got)}, expected {list(reference)}")
    worst = 0.0
    for name, ref in reference.items():
        value = np.asarray(got[name])
        if value.shape != ref.shape or not np.allclose(value, ref, RTOL, ATOL):
            error = float(np.max(np.abs(value - ref))) if value.shape == ref.shape else np.inf
            raise ResultMismatch(f"{side}: tensors[{name!r}] differs from the reference by {error}")
        worst = max(worst, float(np.max(np.abs(value - ref))))
    return worst


# -- the paths: build(case, n) -> inputs, prepare(inputs) -> args, run(case, args) -> output ----


def update_header(
    case: Case, i: int, device_id: str, created_at: float | None = None
) -> ModelUpdate:
    return ModelUpdate(
        fleet=FLEET,
        device_id=device_id,
        round_id=ROUND,
        model=MODEL,
        base_version=BASE_VERSION,
        num_examples=case.weights[i],
        codec=CodecSpec(name="fp32"),
        created_at=time.time() if created_at is None else created_at,
    )


def build_ours(case: Case, updates: int) -> list[bytes]:
    return [
        encode_update(update_header(case, i, f"device-{i:04d}"), case.delta(i))[0]
        for i in range(updates)
    ]


def aligned(data: bytes) -> bool:
    """Whether the frame's float32 tensors start on 4-byte boundaries (numpy's `aligned`)."""
    return all(t.flags.aligned for t in decode_message(data).tensors.values())


def run_ours(case: Case, wire: Sequence[bytes]) -> Arrays:
    strategy = build_strategy(StrategyConfig())
    accumulator = strategy.new_accumulator()
    expected = case.expected()
    seen: set[str] = set()
    for data in wire:
        message = decode_message(data)
        header = message.envelope
        assert isinstance(header, ModelUpdate)
        verdict = check_update(header, message.tensors, expected, seen)
        if not verdict.accepted:
            raise RuntimeError(f"update {header.id} refused: {verdict.reason}")
        accumulator.add(message.tensors, weight=header.num_examples, finite=True)
        seen.update((header.id, f"{header.round_id}/{header.device_id}"))
    new_model, _ = strategy.optimizer.step(case.model, accumulator.result(), {})
    return new_model


def build_legacy(case: Case, updates: int) -> list[Any]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return [
        FitRes(
            status=Status(code=Code.OK, message="Success"),
            parameters=ndarrays_to_parameters(list(case.delta(i).values())),
            num_examples=case.weights[i],
            metrics={},
        )
        for i in range(updates)
    ]


def prepare_legacy(fit_results: list[Any]) -> list[tuple[None, Any]]:
    return [(None, fit_res) for fit_res in fit_results]  # FedAvg.aggregate_fit's `results`


def run_legacy(case: Case, results: list[tuple[None, Any]]) -> list[F32]:
    from flwr.server.strategy.aggregate import aggregate_inplace

    arrays: list[F32] = aggregate_inplace(results)
    return arrays


def build_message(case: Case, updates: int) -> list[tuple[str, dict[str, bytes]]]:
    """Each reply Message deflated into its objects, as a ClientApp pushes them."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.common import MessageType
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.task_identity import TaskIdentity

    # Flower's runtime sets these in every ServerApp/ClientApp process; Message() reads them.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    replies = []
    for i in range(updates):
        instruction = Message(RecordDict(), dst_node_id=i + 1, message_type=MessageType.TRAIN)
        arrays = ArrayRecord({name: Array(value) for name, value in case.delta(i).items()})
        content = RecordDict(
            {"arrays": arrays, "metrics": MetricRecord({WEIGHT_KEY: case.weights[i]})}
        )
        reply = Message(content, reply_to=instruction)
        objects = get_all_nested_objects(reply)
        replies.append((reply.object_id, {oid: obj.deflate() for oid, obj in objects.items()}))
    return replies


def prepare_message(
    replies: list[tuple[str, dict[str, bytes]]],
) -> list[tuple[str, dict[str, bytes]]]:
    # inflate_object_from_contents deletes each entry it inflates: a fresh dict per run (the
    # bytes themselves are shared, not copied).
    return [(object_id, dict(contents)) for object_id, contents in replies]


def run_message(case: Case, replies: list[tuple[str, dict[str, bytes]]]) -> Any:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    messages = [inflate_object_from_contents(oid, contents) for oid, contents in replies]
    return aggregate_arrayrecords([message.content for message in messages], WEIGHT_KEY)


def build_floor(case: Case, updates: int) -> list[tuple[list[F32], float]]:
    return [(list(case.delta(i).values()), float(case.weights[i])) for i in range(updates)]


def run_floor(case: Case, updates: list[tuple[list[F32], float]]) -> list[F32]:
    sums = [np.zeros(a.size, np.float32) for a in updates[0][0]]
    tmp = np.empty(BLOCK, np.float32)
    for arrays, weight in updates:
        w = np.float32(weight)
        for acc, array in zip(sums, arrays, strict=True):
            flat = array.reshape(-1)
            for start in range(0, flat.size, BLOCK):
                end = min(start + BLOCK, flat.size)
                part = tmp[: end - start]
                np.multiply(flat[start:end], w, out=part)
                np.add(acc[start:end], part, out=acc[start:end])
    total = np.float32(sum(weight for _, weight in updates))
    for acc in sums:
        np.divide(acc, total, out=acc)
    return sums


@dataclass(frozen=True)
class Side:
    build: Callable[[Case, int], Any]
    run: Callable[[Case, Any], Any]
    prepare: Callable[[Any], Any] = lambda inputs: inputs
    averaged: bool = True
    """True when `run` returns the weighted mean (Flower, numpy), False for the new model."""


PATHS = {
    "ours": Side(build_ours, run_ours, averaged=False),
    "flower_legacy": Side(build_legacy, run_legacy, prepare_legacy),
    "flower_message": Side(build_message, run_message, prepare_message),
    "numpy_floor": Side(build_floor, run_floor),
}


def new_model(case: Case, side: str, output: Any) -> Arrays:
    """The path's output as the new global model (Flower and numpy give the mean: add it)."""
    if not PATHS[side].averaged:
        return dict(output)
    if side == "flower_message":
        arrays = [output[name].numpy() for name in case.shapes]
    else:
        arrays = list(output)
    return {
        name: case.model[name] + mean.reshape(shape)
        for (name, shape), mean in zip(case.shapes.items(), arrays, strict=True)
    }


def input_bytes(side: str, inputs: Any) -> int:
    """What the receiver holds before it starts: wire bytes, or decoded arrays for the floor."""
    if side.startswith("ours"):
        return sum(len(data) for data in inputs)
    if side == "flower_legacy":
        return sum(len(t) for fit_res in inputs for t in fit_res.parameters.tensors)
    if side == "flower_message":
        return sum(len(b) for _, contents in inputs for b in contents.values())
    return sum(a.nbytes for arrays, _ in inputs for a in arrays)


def time_side(case: Case, side: str, inputs: Any, repeats: int) -> tuple[list[float], Any]:
    """Seconds of each repeat (inputs prepared outside the clock) and the last output."""
    path, times, output = PATHS[side], [], None
    for _ in range(repeats):
        args = path.prepare(inputs)
        output = None  # the previous result must not be alive during the next run
        gc.collect()
        start = time.perf_counter()
        output = path.run(case, args)
        times.append(time.perf_counter() - start)
        del args
    return times, output


def ours_breakdown(case: Case, wire: Sequence[bytes]) -> dict[str, float]:
    """Where ours' time goes: each call timed on its own over the same updates."""
    clock = time.perf_counter
    stages = dict.fromkeys(("decode", "check_update", "add", "result_and_step"), 0.0)
    strategy = build_strategy(StrategyConfig())
    accumulator = strategy.new_accumulator()
    expected, aligned = case.expected(), 0
    seen: set[str] = set()
    gc.collect()
    for data in wire:
        t0 = clock()
        message = decode_message(data)
        t1 = clock()
        header = message.envelope
        assert isinstance(header, ModelUpdate)
        check_update(header, message.tensors, expected, seen)
        t2 = clock()
        accumulator.add(message.tensors, weight=header.num_examples, finite=True)
        t3 = clock()
        stages["decode"] += t1 - t0
        stages["check_update"] += t2 - t1
        stages["add"] += t3 - t2
        aligned += all(t.flags.aligned for t in message.tensors.values())
    t0 = clock()
    strategy.optimizer.step(case.model, accumulator.result(), {})
    stages["result_and_step"] = clock() - t0
    payloads = [unpack_frame(data).payload for data in wire]
    t0 = clock()
    for payload in payloads:
        xxhash.xxh3_128_hexdigest(payload)
    stages["checksum_in_decode"] = clock() - t0
    return {**stages, "aligned_updates": float(aligned), "updates": float(len(wire))}


def flower_breakdown(case: Case, side: str, inputs: Any) -> dict[str, float]:
    """Flower's decoding on its own: np.load of every tensor (legacy); inflating the replies,
    then `Array.numpy()` of every tensor, then the whole aggregate_arrayrecords (message API)."""
    clock = time.perf_counter
    gc.collect()
    if side == "flower_legacy":
        from flwr.common import parameters_to_ndarrays

        t0 = clock()
        for _, fit_res in prepare_legacy(inputs):  # one at a time, as aggregate_inplace does
            parameters_to_ndarrays(fit_res.parameters)
        return {"parameters_to_ndarrays": clock() - t0}
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    replies = prepare_message(inputs)
    t0 = clock()
    messages = [inflate_object_from_contents(oid, contents) for oid, contents in replies]
    t1 = clock()
    for message in messages:
        for array in message.content["arrays"].values():
            array.numpy()
    t2 = clock()
    aggregate_arrayrecords([message.content for message in messages], WEIGHT_KEY)
    t3 = clock()
    return {"inflate": t1 - t0, "array_numpy": t2 - t1, "aggregate_arrayrecords": t3 - t2}


# -- memory: one fresh interpreter per measurement -------------------------------------------


def _status() -> dict[str, int]:
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            figures[key] = int(value.split()[0]) * 1024
    return figures


def _release_free_memory() -> None:
    """Hand the heap memory freed while building the inputs back to the OS (glibc), so that
    the timed section's reuse of it shows in RSS instead of hiding inside the baseline."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS figures may read low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_here(side: str, params: int, updates: int, seed: int) -> dict[str, Any]:
    """Build the inputs, then the peak memory of the timed section alone (this process)."""
    case = Case.build(params, updates, seed)
    path = PATHS[side]
    # Held to the end, as the timing holds them: Flower's inflation frees each reply's bytes
    # from the dict it is handed, which must not make room for its own copies here.
    inputs = path.build(case, updates)
    args = path.prepare(inputs)
    gc.collect()
    _release_free_memory()
    before = _status()["VmRSS"]
    try:  # resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    tracemalloc.start()
    output = path.run(case, args)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = _status()["VmHWM"] - before if hwm_reset else None
    del output, args, inputs
    return {
        "updates": updates,
        "rss_peak_mib": rss_peak / MIB if rss_peak is not None else None,
        "traced_peak_mib": traced_peak / MIB,
    }


def measure_memory(side: str, params: int, updates: int, seed: int) -> dict[str, Any]:
    script = "import json, sys\nfrom bench.aggregate import measure_here\n"
    script += "print(json.dumps(measure_here(sys.argv[1], *map(int, sys.argv[2:]))))"
    done = subprocess.run(
        [sys.executable, "-c", script, side, str(params), str(updates), str(seed)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {side} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return figures


# -- the run ----------------------------------------------------------------------------------


def bench_size(config: Config, params: int, console: Console) -> dict[str, Any]:
    """Every path at one model size: times, checked results, and memory in subprocesses."""
    case = Case.build(params, config.updates, config.seed)
    with console.status(f"{case.params:,} params: the float64 reference"):
        reference = reference_model(case, config.updates)
    paths: dict[str, dict[str, Any]] = {}
    breakdown: dict[str, dict[str, float]] = {}
    for side in config.sides:
        with console.status(f"{case.params:,} params: {side}, building the inputs"):
            inputs = PATHS[side].build(case, config.updates)
        with console.status(f"{case.params:,} params: {side}, {config.repeats} timed runs"):
            times, output = time_side(case, side, inputs, config.repeats)
        error = check_result(side, new_model(case, side, output), reference)
        del output
        paths[side] = {
            "times_s": times,
            "best_s": min(times),
            "input_mib": input_bytes(side, inputs) / MIB,
            "max_abs_error": error,
        }
        if side.startswith("ours"):
            breakdown[side] = ours_breakdown(case, inputs)
        elif side in FLOWER:
            breakdown[side] = flower_breakdown(case, side, inputs)
        del inputs
        gc.collect()
    for figures in paths.values():
        figures["ratio_vs_ours"] = (
            figures["best_s"] / paths["ours"]["best_s"] if "ours" in paths else None
        )
    if config.memory:
        for side in config.sides:
            with console.status(f"{case.params:,} params: {side}, memory (fresh interpreters)"):
                paths[side]["memory"] = [
                    measure_memory(side, params, n, config.seed)
                    for n in (config.flat_updates, config.updates)
                ]
    return {
        "params": case.params,
        "tensors": {name: list(shape) for name, shape in case.shapes.items()},
        "updates": config.updates,
        "paths": paths,
        "breakdown": breakdown,
    }


def goals(size: dict[str, Any]) -> dict[str, Any]:
    """The three goals at one size; a figure is left out when its paths were not run."""
    paths = size["paths"]
    out: dict[str, Any] = {"params": size["params"]}
    ours = paths.get("ours")
    for side in (*FLOWER, "numpy_floor"):
        if ours and side in paths:
            out[f"speedup_vs_{side}"] = paths[side]["best_s"] / ours["best_s"]
    flower = {side: out[f"speedup_vs_{side}"] for side in FLOWER if f"speedup_vs_{side}" in out}
    if flower:  # held to the faster Flower path, as measured in this run
        out["faster_flower_path"] = min(flower, key=flower.__getitem__)
        out["faster_than_flower_3x"] = min(flower.values()) >= 3
    if "speedup_vs_numpy_floor" in out:
        out["ours_over_floor"] = 1 / out.pop("speedup_vs_numpy_floor")
        out["within_2x_of_floor"] = out["ours_over_floor"] <= 2
    if ours and "memory" in ours:
        few, many = ours["memory"]
        growth = {
            kind: (many[key] or 0) - (few[key] or 0)
            for kind, key in (("rss", "rss_peak_mib"), ("traced", "traced_peak_mib"))
        }
        out["ours_peak_growth_mib"] = growth
        # Flat: at most 10% (or 2 MiB) more with 4x the updates, by both measures.
        out["memory_flat"] = all(
            growth[kind] <= max(2.0, 0.1 * (few[key] or 0))
            for kind, key in (("rss", "rss_peak_mib"), ("traced", "traced_peak_mib"))
        )
    return out


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    info: dict[str, Any] = {
        "load_average_at_start": os.getloadavg(),  # others' work on the same cores shows here
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    for package in ("numpy", "scipy", "flwr", "protobuf", "xxhash", "pydantic"):
        info[package] = version_of(package)
    flwr = importlib.util.find_spec("flwr")
    info["flwr_from"] = flwr.origin if flwr else None  # beside the project (see BENCHMARKS.md)
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

        info["threadpools"] = [
            {key: pool.get(key) for key in ("internal_api", "num_threads", "version", "prefix")}
            for pool in threadpool_info()
        ]
    except ImportError:
        pass
    return info


def run(config: Config, console: Console) -> dict[str, Any]:
    if any(side in FLOWER for side in config.sides) and version_of("flwr") is None:
        raise SystemExit(
            'flwr 1.42 is not importable: see BENCHMARKS.md ("Aggregation") for how to put it '
            "beside the project, or run --paths ours --paths numpy_floor"
        )
    info = machine()
    sizes = [bench_size(config, params, console) for params in config.params]
    info["load_average_at_end"] = os.getloadavg()
    return {
        "machine": info,
        "config": asdict(config),
        "sizes": sizes,
        "goals": [goals(size) for size in sizes],
    }


def parse(argv: Sequence[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=int, action="append", help="model size; repeatable")
    parser.add_argument("--updates", type=int, default=Config.updates)
    parser.add_argument("--repeats", type=int, default=Config.repeats, help="best of this many")
    parser.add_argument("--flat-updates", type=int, default=Config.flat_updates)
    parser.add_argument("--paths", action="append", choices=SIDES, help="default: all four")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = Config(
        params=tuple(args.params or Config.params),
        updates=args.updates,
        repeats=args.repeats,
        flat_updates=args.flat_updates,
        sides=tuple(side for side in SIDES if side in (args.paths or SIDES)),
        memory=not args.no_memory,
        seed=args.seed,
    )
    return config, args.out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    config, out = parse(argv)
    console = Console(width=140)
    result = run(config, console)
    result["command"] = shlex.join([".venv/bin/python", "-m", "bench.aggregate", *argv])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(console, result)
    console.print(f"wrote {out}")
    for line in [*goal_lines(result), *flower_lines(result)]:  # the ratios vs Flower last
        console.print(line)
    return result


# -- the report -------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def report(console: Console, result: dict[str, Any]) -> None:
    flat = result["config"]["flat_updates"]
    table = Table(
        title=f"FedAvg from wire bytes to the new model (best of {result['config']['repeats']})"
    )
    columns = (
        "params",
        "path",
        "best s",
        "× ours",
        "inputs MiB",
        "RSS peak MiB",
        "traced peak MiB",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in {"params", "path"} else "right")
    for size in result["sizes"]:
        for side, f in size["paths"].items():
            memory = {m["updates"]: m for m in f.get("memory", [])}
            peaks = [
                " / ".join(_mib(memory[n][key]) for n in sorted(memory)) if memory else "–"
                for key in ("rss_peak_mib", "traced_peak_mib")
            ]
            ratio = "–" if f["ratio_vs_ours"] is None else f"{f['ratio_vs_ours']:.2f}"
            table.add_row(
                f"{size['params']:,}",
                side,
                f"{f['best_s']:.3f}",
                ratio,
                _mib(f["input_mib"]),
                *peaks,
            )
    console.print(table)
    console.print(
        f"peak memory: the timed section alone, at {flat} / {result['config']['updates']} updates"
    )
    breakdown = Table(
        title="ours: where the time goes (s, the same updates, each call timed alone)"
    )
    stages = ("decode", "checksum_in_decode", "check_update", "add", "result_and_step")
    for column in ("params", *stages, "aligned"):
        breakdown.add_column(column, justify="right")
    for size in result["sizes"]:
        for side, b in size["breakdown"].items():
            if side == "ours":
                aligned = f"{b['aligned_updates']:.0f}/{b['updates']:.0f}"
                row = (f"{b[stage]:.3f}" for stage in stages)
                breakdown.add_row(f"{size['params']:,}", *row, aligned)
    console.print(breakdown)
    for size in result["sizes"]:
        for side in FLOWER:
            if side in size["breakdown"]:
                parts = ", ".join(f"{k} {v:.3f} s" for k, v in size["breakdown"][side].items())
                console.print(f"{size['params']:,} params, {side}, each part alone: {parts}")


def goal_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for g in result["goals"]:
        if "ours_over_floor" in g:
            met = "met" if g["within_2x_of_floor"] else "NOT met"
            lines.append(
                f"{g['params']:,} params: ours / numpy floor {g['ours_over_floor']:.2f} "
                f"(goal ≤ 2: {met})"
            )
        if "memory_flat" in g:
            growth = g["ours_peak_growth_mib"]
            met = "met" if g["memory_flat"] else "NOT met"
            lines.append(
                f"{g['params']:,} params: ours' peak grows {growth['rss']:+.1f} MiB RSS, "
                f"{growth['traced']:+.1f} MiB traced from {result['config']['flat_updates']} "
                f"to {result['config']['updates']} updates (goal flat: {met})"
            )
    return lines


def flower_lines(result: dict[str, Any]) -> list[str]:
    names = {"flower_legacy": "legacy FedAvg", "flower_message": "message-API FedAvg"}
    lines = []
    for g in result["goals"]:
        if "faster_than_flower_3x" in g:
            each = ", ".join(
                f"{names[side]} {g[f'speedup_vs_{side}']:.2f}×"
                for side in FLOWER
                if f"speedup_vs_{side}" in g
            )
            met = "met" if g["faster_than_flower_3x"] else "NOT met"
            lines.append(
                f"{g['params']:,} params, Flower's time / ours: {each} "
                f"(goal ≥ 3 vs the faster, {names[g['faster_flower_path']]}: {met})"
            )
    return lines


if __name__ == "__main__":
    main()
