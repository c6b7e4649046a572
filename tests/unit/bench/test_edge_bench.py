"""The edge bench's parts, at a tiny size: each side is measured, on real data, and every
figure the report and BENCHMARKS.md read is there and positive."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from bench.edge import (
    BARE_RUNTIME,
    CASES,
    Size,
    inference_latency,
    installed_release,
    memory_of,
    ratios,
    reference_memory,
    report,
    rows_of,
    training_throughput,
    write_device,
)
from edge_agent.config import load_edge_config

TINY = Size(blocks=2, calls=20, rows=64, epochs=1, repeats=1, idle_s=0.1)


def positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = []
    for case in CASES:
        flat, labels = rows_of(case)
        installed = installed_release(case, tmp_path_factory.mktemp(case.architecture))
        out.append(
            {
                "model": case.architecture,
                "inference": inference_latency(installed, flat, TINY),
                "training": training_throughput(case, flat, labels, TINY),
            }
        )
    return out


def test_inference_times_both_sides_on_every_call(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        figures = row["inference"]
        assert figures["calls"] == TINY.blocks * TINY.calls
        for side in ("ours", "bare"):
            assert positive(figures[side]["p50_us"])
            assert figures[side]["p99_us"] >= figures[side]["p50_us"]
        assert positive(figures["p50_ratio"])
        assert positive(figures["p99_ratio"])


def test_training_reports_loop_call_and_plain_and_restores_threads(
    rows: list[dict[str, Any]],
) -> None:
    threads = torch.get_num_threads()
    for row in rows:
        figures = row["training"]
        assert (figures["rows"], figures["epochs"], figures["repeats"]) == (64, 1, 1)
        for key in ("plain_samples_per_s", "ours_loop_samples_per_s", "ours_whole_samples_per_s"):
            assert positive(figures[key])
        # the whole call does more than its loop (a loss before and after): never faster
        assert figures["ours_whole_samples_per_s"] <= figures["ours_loop_samples_per_s"]
        assert positive(figures["loop_ratio"])
    assert torch.get_num_threads() == threads


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads Linux /proc")
def test_memory_references_and_the_report(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    model = installed_release(CASES[0], tmp_path).file("onnx")
    bare = reference_memory(BARE_RUNTIME, str(model), "6,100")
    assert 10 < bare["rss_mib"] <= bare["peak_mib"]
    assert memory_of(os.getpid())["VmRSS"] > 0
    agent = {"idle_rss_mib": 100.0, "idle_peak_mib": 120.0, "training_peak_mib": 600.0}
    rss = {
        "agent": agent,
        "agent_inference_only": agent,
        "bare_runtime": bare,
        "torch_imported": bare,
    }
    console = Console(record=True, width=120)
    report(console, rows, rss)
    text = console.export_text()
    assert "cnn1d" in text
    assert "bare onnxruntime" in text
    assert "goal ≤ 1.05" in ratios(rows, rss)[0]


def test_the_device_config_is_one_the_agent_accepts(tmp_path: Path) -> None:
    path = write_device(
        tmp_path, "mqtt://127.0.0.1:1883", "bench", Ed25519PrivateKey.generate(), train=False
    )
    config = load_edge_config(path)
    assert not config.training.enabled
    assert config.collectors[0].kind == "replay"
    assert (tmp_path / "keys" / "bench.pem").is_file()
