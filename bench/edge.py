"""The edge agent's costs against the bare runtimes, in one run: latency, training, memory.

    .venv/bin/python -m bench.edge [--quick]

For the 1D-CNN on the smartwatch windows and the MLP on breast cancer (real data, seeded
weights, a signed release installed in a real model store) it measures:

(1) inference, one sample per call as a device runs it: `Predictor.predict(flat_row)` against
    a bare onnxruntime session on the same file (one thread, CPU provider) fed the same rows
    already shaped; the two alternate in blocks after a warm-up, p50 and p99 per call;
(2) local training: `train_local` against a plain torch loop (same initial weights, same rows,
    SGD, batch 32, a seeded shuffle, cross-entropy, the same epochs), both on 2 threads; the
    training loop alone (`metrics["samples_per_s"]`) and the whole call (with its loss before
    and after) against the plain loop, alternating, median of the repeats;
(3) memory: the real agent (`fleetlearn edge run`) against an embedded broker, replaying watch
    subject 1 at 200 Hz with release v1 installed: RSS while idle, peak RSS (VmHWM) once a
    round's update was sent, and the same agent with training off (torch never imported);
    the reference is a bare Python process that loaded the same model in onnxruntime, and
    beside it one that only imported torch (what the training side's import alone costs).

Writes bench/results/edge.json (edge-quick.json with --quick); prints the ratios last (goals:
latency ≤ 1.05× bare, training loop ≥ 0.95× plain).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from bench.cpu import cpu_model
from bus.mqtt import connect_mqtt
from bus.mqtt.broker import EmbeddedBroker
from bus.protocol import RoundAnnouncement, Sampling, TrainingConfig, encode_message
from bus.topics import default_prefix, release_topic, rounds_topic, update_topic
from edge_agent.buffer import Window
from edge_agent.inference import Predictor
from edge_agent.local_training import train_local
from edge_agent.model_store import Installed, ModelStore
from models.datasets import load, standardize
from models.registry import build_model
from models.release import encode_release, model_files, signed_manifest

RESULTS = Path(__file__).parent / "results" / "edge.json"
ROOT = Path(__file__).resolve().parents[1]
KEY_ID = "bench"
MODEL = "har"  # the release the agent follows
DEVICE = "pi-1"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    architecture: str
    dataset: str
    config: dict[str, Any]
    input_shape: tuple[int, ...]
    epochs: int
    """Epochs of the training comparison: the tabular set is small, so it gets more."""


CASES = (
    Case("cnn1d", "watch", {"in_channels": 6, "num_classes": 7}, (6, 100), epochs=2),
    Case("mlp", "breast_cancer", {"in_features": 30, "num_classes": 2}, (30,), epochs=20),
)


@dataclass(frozen=True)
class Size:
    """How much each part measures; `--quick` and the unit test use small ones."""

    blocks: int = 20
    calls: int = 500  # per block and side: 10,000 calls each, so that p99 settles
    rows: int | None = None  # training rows; None = the whole data set
    epochs: int | None = None  # None = the case's own
    repeats: int = 5
    idle_s: float = 5.0


QUICK = Size(blocks=4, calls=100, rows=512, epochs=1, repeats=3, idle_s=2.0)


def rows_of(case: Case) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The data set scaled as the replay collector scales it, one flat row per sample."""
    ds, _ = standardize(load(case.dataset), load(case.dataset))
    return np.ascontiguousarray(ds.x.reshape(len(ds.x), -1)), ds.y


def seeded_module(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(case.architecture, case.config)


def release(
    case: Case, key: Ed25519PrivateKey, directory: Path, *, fleet: str = "bench"
) -> tuple[bytes, Any, dict[str, bytes]]:
    """Release v1 of the case's seeded model: (message, manifest, files by name)."""
    files = model_files(
        seeded_module(case).eval(),
        architecture=case.architecture,
        config=case.config,
        example=np.zeros((1, *case.input_shape), np.float32),
        directory=directory,
    )
    manifest = signed_manifest(
        fleet=fleet, model=MODEL, version=1, files=files, key=key, key_id=KEY_ID
    )
    return encode_release(manifest, files), manifest, {n: data for n, (_, data) in files.items()}


def installed_release(case: Case, workdir: Path) -> Installed:
    """The release installed and active in a model store, as the agent leaves it."""
    _, manifest, files = release(case, Ed25519PrivateKey.generate(), workdir / "release")
    store = ModelStore(workdir / "models")
    installed = store.install(manifest, files)
    store.activate(installed)
    return installed


# -- (1) inference latency --------------------------------------------------------------------


def _time_ours(predict: Callable[..., Any], rows: list[Any], times: list[float]) -> None:
    clock = time.perf_counter
    for row in rows:
        start = clock()
        predict(row)
        times.append(clock() - start)


def _time_bare(run: Callable[..., Any], name: str, rows: list[Any], times: list[float]) -> None:
    clock = time.perf_counter
    for x in rows:
        start = clock()
        run(None, {name: x})
        times.append(clock() - start)


def bare_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inference_latency(
    installed: Installed, flat: npt.NDArray[np.float32], size: Size
) -> dict[str, Any]:
    """p50 and p99 µs per one-sample call, ours and bare, alternating blocks of `calls`."""
    predictor = Predictor(installed, runtime="onnx")
    session = bare_session(installed.file("onnx"))
    name = session.get_inputs()[0].name
    shape = (1, *(int(d) for d in session.get_inputs()[0].shape[1:]))
    ours_rows = [flat[i % len(flat)] for i in range(size.calls)]  # the same rows, both sides
    bare_rows = [row.reshape(shape) for row in ours_rows]
    ours: list[float] = []
    bare: list[float] = []
    _time_ours(predictor.predict, ours_rows, [])  # warm-up, not kept
    _time_bare(session.run, name, bare_rows, [])
    gc.collect()
    for block in range(size.blocks):
        if block % 2 == 0:  # who goes first alternates too
            _time_ours(predictor.predict, ours_rows, ours)
            _time_bare(session.run, name, bare_rows, bare)
        else:
            _time_bare(session.run, name, bare_rows, bare)
            _time_ours(predictor.predict, ours_rows, ours)
    figures = {
        side: {f"p{q}_us": float(np.percentile(times, q) * 1e6) for q in (50, 99)}
        for side, times in (("ours", ours), ("bare", bare))
    }
    return {
        **figures,
        "calls": len(ours),
        "p50_ratio": figures["ours"]["p50_us"] / figures["bare"]["p50_us"],
        "p99_ratio": figures["ours"]["p99_us"] / figures["bare"]["p99_us"],
    }


# -- (2) local training -----------------------------------------------------------------------


def plain_loop(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
) -> float:
    """A hand-written torch loop over the same rows; returns its seconds."""
    model = copy.deepcopy(module).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rows = y.shape[0]
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(rows, generator=generator)
        for first in range(0, rows, batch_size):
            index = order[first : first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(F.cross_entropy(model(x[index]), y[index]))
            optimizer.step()
    return time.perf_counter() - start


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_throughput(
    case: Case, flat: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], size: Size
) -> dict[str, Any]:
    """Samples/s: ours (loop alone, whole call) and plain; alternating, medians of repeats."""
    n = min(size.rows or len(flat), len(flat))
    epochs = size.epochs or case.epochs
    module = seeded_module(case)
    window = Window(flat[:n], labels[:n].astype(np.float32))
    x = torch.from_numpy(flat[:n].reshape(n, *case.input_shape).copy())
    y = torch.from_numpy(labels[:n].copy())
    config = TrainingConfig(epochs=epochs, batch_size=32, learning_rate=0.05)
    samples = n * epochs
    runs: dict[str, list[float]] = {"loop": [], "whole": [], "plain": []}

    def ours() -> None:
        start = time.perf_counter()
        result = train_local(module, window, config, input_shape=case.input_shape)
        runs["whole"].append(samples / (time.perf_counter() - start))
        runs["loop"].append(result.metrics["samples_per_s"])

    def plain() -> None:
        runs["plain"].append(samples / plain_loop(module, x, y, epochs))

    with torch_threads(2):
        warm = TrainingConfig(epochs=1, max_steps=5, batch_size=32, learning_rate=0.05)
        train_local(module, window, warm, input_shape=case.input_shape)
        plain_loop(module, x[:160], y[:160], 1)
        for repeat in range(size.repeats):
            for side in (ours, plain) if repeat % 2 == 0 else (plain, ours):
                # A full collection of the garbage one run leaves would otherwise land in the
                # next run's timing (measured: ~70 ms, both sides alike), so each starts clean.
                gc.collect()
                side()
    medians = {side: float(np.median(values)) for side, values in runs.items()}
    return {
        "rows": n,
        "epochs": epochs,
        "repeats": size.repeats,
        "plain_samples_per_s": medians["plain"],
        "ours_loop_samples_per_s": medians["loop"],
        "ours_whole_samples_per_s": medians["whole"],
        "loop_ratio": medians["loop"] / medians["plain"],
        "whole_ratio": medians["whole"] / medians["plain"],
        "runs_samples_per_s": runs,  # every repeat, in order: the spread behind the medians
    }


# -- (3) memory -------------------------------------------------------------------------------


def vm_figures(status: str) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB, from the text of a /proc/PID/status."""
    figures = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            figures[key] = int(value.split()[0]) * 1024 / MIB
    return figures


def memory_of(pid: int) -> dict[str, float]:
    return vm_figures(Path(f"/proc/{pid}/status").read_text())


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


# The references, each in a fresh interpreter: the runtime alone with the same model loaded and
# run once (what inference costs at the least), and an interpreter that imported torch (what
# the training side's import costs before any training).
BARE_RUNTIME = """
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
shape = [1, *(int(d) for d in sys.argv[2].split(","))]
session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})
print(open("/proc/self/status").read())
"""
TORCH_IMPORTED = "import numpy, torch\nprint(open('/proc/self/status').read())"


def reference_memory(script: str, *args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    figures = vm_figures(done.stdout)
    return {"rss_mib": figures["VmRSS"], "peak_mib": figures["VmHWM"]}


class AgentRun:
    """`fleetlearn edge run` in a subprocess; its JSON log lines are kept for the waits."""

    def __init__(self, config: Path) -> None:
        self.messages: list[str] = []
        self.raw: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetlearn.cli", "edge", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw.append(line.rstrip())
            with contextlib.suppress(ValueError, AttributeError):
                self.messages.append(str(json.loads(line).get("msg")))

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or self.process.poll() is not None:
                tail = "\n".join(self.raw[-20:])
                raise RuntimeError(f"the agent never got to {what}; its log ends:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def write_device(
    workdir: Path, broker_url: str, fleet: str, key: Ed25519PrivateKey, *, train: bool
) -> Path:
    """The device's config and the fleet's public key, as a device is set up."""
    keys = workdir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / f"{KEY_ID}.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    fields = {
        "device_id": DEVICE,
        "fleet": fleet,
        "mqtt_url": broker_url,
        "data_dir": str(workdir / "data"),
        "heartbeat_s": 1.0,
        "model": {"name": MODEL, "keys_dir": str(keys), "runtime": "onnx"},
        "training": {
            "enabled": train,
            "min_samples": 32,
            "holdout": 16,
            "gate": {"max_cpu_percent": 100},  # the bench itself keeps the 2 cores busy
        },
        "collectors": [
            {"kind": "replay", "dataset": "watch", "subject": 1, "rate_hz": 200, "loop": True}
        ],
    }
    path = workdir / "device.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def publish(broker_url: str, topic: str, payload: bytes) -> None:
    """A retained message, as the cloud leaves releases and round announcements."""
    client = connect_mqtt(broker_url, client_id=f"bench-cloud-{uuid.uuid4().hex[:6]}")
    client.publish(topic, payload, retain=True).wait(10)
    client.close()


def sample_rss(pid: int, seconds: float) -> list[float]:
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(memory_of(pid)["VmRSS"])
        time.sleep(0.1)
    return readings


def agent_memory(broker_url: str, workdir: Path, *, train: bool, idle_s: float) -> dict[str, Any]:
    """RSS of the real agent: idle with v1 serving; with `train`, peak after a round's update."""
    fleet = f"bench{uuid.uuid4().hex[:8]}"
    prefix = default_prefix(fleet)
    key = Ed25519PrivateKey.generate()
    message, _, _ = release(CASES[0], key, workdir / "release", fleet=fleet)
    publish(broker_url, release_topic(prefix, MODEL), message)
    sent = threading.Event()
    watcher = connect_mqtt(
        broker_url,
        client_id=f"bench-watch-{uuid.uuid4().hex[:6]}",
        subscriptions={update_topic(prefix, DEVICE): lambda _: sent.set()},
    )
    agent = AgentRun(write_device(workdir, broker_url, fleet, key, train=train))
    try:
        agent.wait_for(lambda: "model installed" in agent.messages, "installing v1", 120)
        idle = sample_rss(agent.process.pid, idle_s)
        result: dict[str, Any] = {
            "idle_rss_mib": float(np.median(idle)),
            "idle_rss_max_mib": max(idle),
            "idle_peak_mib": memory_of(agent.process.pid)["VmHWM"],
        }
        if train:
            announce(broker_url, fleet)
            agent.wait_for(sent.is_set, "sending its update", 180)
            after = memory_of(agent.process.pid)
            result.update(training_peak_mib=after["VmHWM"], after_training_rss_mib=after["VmRSS"])
            queued: dict[str, Any] = next(
                (json.loads(line) for line in agent.raw if '"update queued"' in line), {}
            )
            result["trained_on"] = queued.get("examples")
        result["torch_loaded"] = torch_loaded(agent.process.pid)
        return result
    finally:
        agent.stop()
        watcher.close()


def announce(broker_url: str, fleet: str) -> None:
    announcement = RoundAnnouncement(
        fleet=fleet,
        round_id="bench-r1",
        model=MODEL,
        base_version=1,
        deadline=time.time() + 300,
        training=TrainingConfig(epochs=1, batch_size=32, learning_rate=0.05),
        sampling=Sampling(devices=(DEVICE,)),
    )
    publish(broker_url, rounds_topic(default_prefix(fleet)), encode_message(announcement))


def memory(workdir: Path, size: Size) -> dict[str, Any]:
    """The agent with and without training, and the bare runtime with the same model."""
    with EmbeddedBroker(data_dir=workdir / "broker") as broker:
        training = agent_memory(broker.url, workdir / "train", train=True, idle_s=size.idle_s)
        inference = agent_memory(broker.url, workdir / "infer", train=False, idle_s=size.idle_s)
        kind = broker.kind
    model = installed_release(CASES[0], workdir / "bare").file("onnx")
    shape = ",".join(str(d) for d in CASES[0].input_shape)
    return {
        "broker": kind,
        "agent": training,
        "agent_inference_only": inference,
        "bare_runtime": reference_memory(BARE_RUNTIME, str(model), shape),
        "torch_imported": reference_memory(TORCH_IMPORTED),
    }


# -- the run ----------------------------------------------------------------------------------


def per_model(size: Size, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        flat, labels = rows_of(case)
        installed = installed_release(case, workdir / case.architecture)
        rows.append(
            {
                "model": case.architecture,
                "dataset": case.dataset,
                "inference": inference_latency(installed, flat, size),
                "training": training_throughput(case, flat, labels, size),
            }
        )
    return rows


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, ~15 s")
    args = parser.parse_args()
    size = QUICK if args.quick else Size()
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        with console.status("inference and training, ours and the reference"):
            models = per_model(size, Path(tmp))
        with console.status("the agent's memory (starts a broker and the agent twice)"):
            rss = memory(Path(tmp) / "memory", size)
    result = {"machine": machine(), "quick": args.quick, "size": vars(size)}
    result.update(models=models, memory=rss)
    results = RESULTS.with_name("edge-quick.json") if args.quick else RESULTS  # keeps the real one
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    report(console, models, rss)
    console.print(f"wrote {results}")
    for line in ratios(models, rss):
        console.print(line)


def table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> Table:
    out = Table(title=title)
    for column in columns:
        out.add_column(column, justify="left" if column in {"model", "process"} else "right")
    for row in rows:
        out.add_row(*row)
    return out


def report(console: Console, models: list[dict[str, Any]], rss: dict[str, Any]) -> None:
    console.print(latency_table(models))
    console.print(training_table(models))
    console.print(memory_table(rss))


def latency_table(models: list[dict[str, Any]]) -> Table:
    rows = []
    for row in models:
        f = row["inference"]
        rows.append([row["model"]])
        for q in ("p50", "p99"):
            rows[-1] += [f"{f['ours'][q + '_us']:.1f}", f"{f['bare'][q + '_us']:.1f}"]
            rows[-1].append(f"{f[q + '_ratio']:.2f}")
    columns = ("model", "ours p50", "bare p50", "p50 ×", "ours p99", "bare p99", "p99 ×")
    return table("inference, one sample per call (µs)", columns, rows)


def training_table(models: list[dict[str, Any]]) -> Table:
    rows = [
        [
            row["model"],
            f"{t['rows']} × {t['epochs']}",
            f"{t['plain_samples_per_s']:,.0f}",
            f"{t['ours_loop_samples_per_s']:,.0f}",
            f"{t['loop_ratio']:.2f}",
            f"{t['ours_whole_samples_per_s']:,.0f}",
            f"{t['whole_ratio']:.2f}",
        ]
        for row in models
        for t in [row["training"]]
    ]
    columns = ("model", "rows × epochs", "plain", "ours loop", "loop ×", "ours call", "call ×")
    return table("local training, samples/s (2 threads, median)", columns, rows)


def memory_table(rss: dict[str, Any]) -> Table:
    agent, inference = rss["agent"], rss["agent_inference_only"]
    processes = [
        ("agent, training on", agent["idle_rss_mib"], agent["training_peak_mib"]),
        ("agent, inference only", inference["idle_rss_mib"], inference["idle_peak_mib"]),
        ("bare onnxruntime", rss["bare_runtime"]["rss_mib"], rss["bare_runtime"]["peak_mib"]),
        ("python + torch", rss["torch_imported"]["rss_mib"], rss["torch_imported"]["peak_mib"]),
    ]
    bare = rss["bare_runtime"]["rss_mib"]
    rows = [
        [name, f"{now:.1f}", f"{peak:.1f}", f"{now / bare:.2f}"] for name, now, peak in processes
    ]
    columns = ("process", "RSS (idle)", "peak (VmHWM)", "RSS × bare")
    return table("memory, MiB (cnn1d v1; the agent replays watch at 200 Hz)", columns, rows)


def ratios(models: list[dict[str, Any]], rss: dict[str, Any]) -> list[str]:
    def each(part: str, key: str) -> str:
        return ", ".join(f"{row['model']} {row[part][key]:.2f}" for row in models)

    bare = rss["bare_runtime"]["rss_mib"]
    return [
        f"inference ours / bare, p50: {each('inference', 'p50_ratio')}; "
        f"p99: {each('inference', 'p99_ratio')} (goal ≤ 1.05)",
        f"training loop ours / plain: {each('training', 'loop_ratio')} (goal ≥ 0.95); "
        f"whole call: {each('training', 'whole_ratio')}",
        f"idle RSS agent / bare runtime: training on {rss['agent']['idle_rss_mib'] / bare:.2f}, "
        f"inference only {rss['agent_inference_only']['idle_rss_mib'] / bare:.2f}",
    ]


if __name__ == "__main__":
    main()
