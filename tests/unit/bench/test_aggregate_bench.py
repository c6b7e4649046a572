"""The aggregation bench at a tiny size: every path computes the same new model, the JSON holds
every figure, ratios come from the times, and a path that computes something else is refused."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.aggregate import (
    ATOL,
    PATHS,
    RTOL,
    SIDES,
    Case,
    ResultMismatch,
    aligned,
    check_result,
    main,
    measure_memory,
    new_model,
    reference_model,
    update_header,
)
from bus.protocol import encode_update

ROOT = Path(__file__).resolve().parents[3]
FLOWER = ROOT / ".cache" / "flwr-1.42"
TINY = ["--params", "10000", "--updates", "5", "--repeats", "1", "--no-memory"]


def positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def outputs(case: Case, sides: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    models = {}
    for side in sides:
        path = PATHS[side]
        inputs = path.prepare(path.build(case, case.updates))
        models[side] = new_model(case, side, path.run(case, inputs))
    return models


def test_ours_equals_the_numpy_floor_and_the_reference() -> None:
    case = Case.build(10_000, 5)
    models = outputs(case, ("ours", "numpy_floor"))
    reference = reference_model(case, 5)
    for side, model in models.items():
        assert list(model) == list(case.shapes)
        for name, value in model.items():
            np.testing.assert_allclose(value, models["numpy_floor"][name], RTOL, ATOL)
            np.testing.assert_allclose(value, reference[name], RTOL, ATOL, err_msg=side)
        # the model moved: the check would not pass by comparing the old model with itself
        assert not np.allclose(model["embedding.weight"], case.model["embedding.weight"], 0, 1e-4)


def test_a_path_with_a_wrong_result_is_refused() -> None:
    case = Case.build(10_000, 3)
    reference = reference_model(case, 3)
    good = {name: value.astype(np.float32) for name, value in reference.items()}
    assert check_result("ours", good, reference) <= ATOL
    # one update dropped: the mean moves by far more than float32 rounding
    dropped = {name: value.astype(np.float32) for name, value in reference_model(case, 2).items()}
    with pytest.raises(ResultMismatch, match="ours: tensors"):
        check_result("ours", dropped, reference)
    with pytest.raises(ResultMismatch, match="tensors"):
        check_result("ours", {"dense.bias": good["dense.bias"]}, reference)


def test_every_frame_is_aligned_whatever_its_header_length() -> None:
    case = Case.build(10_000, 2)
    frames = [
        encode_update(update_header(case, 0, "device-0" + "x" * pad, 1.7e9), case.delta(0))[0]
        for pad in range(8)
    ]
    assert all(aligned(data) for data in frames)


def check_json(result: dict[str, Any], sides: tuple[str, ...]) -> None:
    (size,) = result["sizes"]
    assert size["params"] == sum(math.prod(shape) for shape in size["tensors"].values())
    assert tuple(size["paths"]) == sides
    ours = size["paths"]["ours"]["best_s"]
    for side, figures in size["paths"].items():
        assert len(figures["times_s"]) == 1
        assert all(positive(t) for t in figures["times_s"]), side
        assert figures["best_s"] == min(figures["times_s"])
        assert figures["ratio_vs_ours"] == pytest.approx(figures["best_s"] / ours)
        assert figures["max_abs_error"] <= ATOL + RTOL
        assert positive(figures["input_mib"])
    assert set(size["breakdown"]) == {s for s in sides if s != "numpy_floor"}
    breakdown = size["breakdown"]["ours"]
    assert breakdown["updates"] == 5
    assert all(breakdown[key] >= 0 for key in ("decode", "check_update", "add"))
    assert result["machine"]["numpy"] == np.__version__
    assert result["command"].startswith(".venv/bin/python -m bench.aggregate --params 10000")


def test_main_with_flower_writes_every_path_and_ratios_from_the_times(tmp_path: Path) -> None:
    """Flower lives beside the project (`make flower`), so this runs as the bench is run: in its
    own interpreter with Flower on PYTHONPATH. The bench refuses to report a path whose model
    differs from the float64 reference, so a zero exit also says both Flower paths agree."""
    assert (FLOWER / "flwr").is_dir(), f"Flower is not installed in {FLOWER}: run `make flower`"
    out = tmp_path / "aggregate.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FLOWER), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "bench.aggregate", *TINY, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    check_json(result, SIDES)
    paths = result["sizes"][0]["paths"]
    (goals,) = result["goals"]
    for side in ("flower_legacy", "flower_message"):
        expected = paths[side]["best_s"] / paths["ours"]["best_s"]
        assert goals[f"speedup_vs_{side}"] == pytest.approx(expected)
    assert goals["ours_over_floor"] == pytest.approx(
        paths["ours"]["best_s"] / paths["numpy_floor"]["best_s"]
    )
    faster = min(("flower_legacy", "flower_message"), key=lambda side: paths[side]["best_s"])
    assert goals["faster_flower_path"] == faster
    assert goals["faster_than_flower_3x"] == (goals[f"speedup_vs_{faster}"] >= 3)
    assert result["machine"]["flwr"].startswith("1.42")


def test_main_without_flower(tmp_path: Path) -> None:
    sides = ("ours", "numpy_floor")
    result = main(
        [*TINY, "--paths", "numpy_floor", "--paths", "ours", "--out", str(tmp_path / "a")]
    )
    check_json(result, sides)
    assert "faster_than_flower_3x" not in result["goals"][0]


def test_memory_is_measured_in_a_fresh_interpreter() -> None:
    figures = measure_memory("ours", 10_000, 3, 0)
    assert figures["updates"] == 3
    # the accumulator's sums alone are 10,000 float32 values
    assert figures["traced_peak_mib"] >= 10_000 * 4 / 2**20
    assert figures["rss_peak_mib"] is None or figures["rss_peak_mib"] >= 0
