"""Run exported files the way devices do, so parity is checked on the runtimes that matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bus.errors import ValidationError


class Runner(Protocol):
    name: str

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...


class OnnxRunner:
    """onnxruntime on the CPU, one thread: what a Raspberry Pi gets."""

    name = "onnxruntime"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ValidationError(
                f"onnxruntime cannot load {path.name}: {exc}", where=str(path)
            ) from exc
        self._input = self._session.get_inputs()[0].name

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        out = self._session.run(None, {self._input: np.ascontiguousarray(x)})[0]
        return np.asarray(out, dtype=np.float32)

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Input and output names, shapes (None = dynamic) and element types."""

        def describe(args: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": a.name,
                    "shape": [d if isinstance(d, int) else None for d in a.shape],
                    "dtype": a.type.removeprefix("tensor(").removesuffix(")"),
                }
                for a in args
            ]

        return {
            "inputs": describe(self._session.get_inputs()),
            "outputs": describe(self._session.get_outputs()),
        }


def run_batched(runner: Runner, x: npt.NDArray[Any], batch: int = 256) -> npt.NDArray[np.float32]:
    return np.concatenate([runner.run(x[i : i + batch]) for i in range(0, len(x), batch)])
