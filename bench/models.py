"""Model files side by side: size and single-sample latency, fp32 vs int8, in every runtime.

    .venv/bin/python -m bench.models [--epochs 3] [--runs 300]    # a module: `models` is ours

Trains each architecture briefly on its real data set, exports ONNX and TFLite (fp32 and int8,
each passing its parity checks), then times one-sample inference on one thread, the way a
device runs it. Writes bench/results/models.json and prints the ratios the goals are about:
int8 file ≤ 0.3× fp32, int8 accuracy drop ≤ 1 point.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models.export.pipeline import ExportRequest, export_checked
from models.export.runtimes import LiteRtRunner, OnnxRunner, Runner
from models.train import fit
from models.workflow import DEFAULT_DATASET, build_seeded, default_config, prepare_data

RESULTS = Path(__file__).parent / "results" / "models.json"


def latency_ms(runner: Runner, sample: np.ndarray, runs: int) -> float:
    """Median wall time of one single-sample call, after a warm-up."""
    for _ in range(10):
        runner.run(sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(sample)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench_model(model: str, epochs: int, runs: int, workdir: Path) -> list[dict[str, Any]]:
    split = prepare_data(DEFAULT_DATASET[model], seed=0)
    module = build_seeded(model, default_config(model, split.train), seed=0)
    fit(module, split.train.x, split.train.y, epochs=epochs, batch_size=64, lr=3e-3, seed=0)
    request = ExportRequest(
        name=model,
        version=1,
        architecture=model,
        classes=list(split.test.classes),
        heldout_x=split.test.x,
        heldout_y=split.test.y,
        calibration_x=split.train.x[:256],
    )
    rows = []
    for fmt in ("onnx", "tflite"):
        manifest = export_checked(
            module.eval(), request, workdir / f"{model}-{fmt}", formats=(fmt,)
        )
        files = {entry.quantization: entry for entry in manifest.files}
        for check in manifest.checks:  # one per runtime and mode
            entry = files[check["quantization"]]
            path = workdir / f"{model}-{fmt}" / entry.name
            runner: Runner = (
                OnnxRunner(path) if fmt == "onnx" else LiteRtRunner(path, runtime=check["runtime"])
            )
            rows.append(
                {
                    "model": model,
                    "runtime": runner.name,
                    "quantization": entry.quantization,
                    "bytes": entry.size,
                    "latency_ms": latency_ms(runner, split.test.x[:1], runs),
                    "accuracy": check["accuracy"],
                    "accuracy_drop_points": check["accuracy_drop"] * 100,
                }
            )
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fp32 = {(r["model"], r["runtime"]): r for r in rows if r["quantization"] == "fp32"}
    for row in rows:
        base = fp32[(row["model"], row["runtime"])]
        row["size_vs_fp32"] = row["bytes"] / base["bytes"]
        row["latency_vs_fp32"] = row["latency_ms"] / base["latency_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            row
            for model in DEFAULT_DATASET
            for row in bench_model(model, args.epochs, args.runs, Path(tmp))
        ]
    rows = with_ratios(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": platform.machine(), "python": platform.python_version(), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    table = Table(title="model files: int8 vs fp32 (single sample, one thread)")
    for column in (
        "model",
        "runtime",
        "mode",
        "KiB",
        "size ×",
        "latency ms",
        "latency ×",
        "accuracy",
        "drop pt",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            r["runtime"],
            r["quantization"],
            f"{r['bytes'] / 1024:.1f}",
            f"{r['size_vs_fp32']:.2f}",
            f"{r['latency_ms']:.3f}",
            f"{r['latency_vs_fp32']:.2f}",
            f"{r['accuracy']:.4f}",
            f"{r['accuracy_drop_points']:+.2f}",
        )
    Console(width=140).print(table)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
