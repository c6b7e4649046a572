"""Run exported files the way devices do, so parity is checked on the runtimes that matter."""

from __future__ import annotations

import importlib
import importlib.util
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
        # Named, not None: onnxruntime then skips listing every output on each call.
        self._outputs = [self._session.get_outputs()[0].name]

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        out = self._session.run(self._outputs, {self._input: np.ascontiguousarray(x)})[0]
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


# The TFLite interpreters devices use: LiteRT (numpy 2), and the older tflite-runtime, which
# needs numpy < 2 and so only exists in an environment of its own.
TFLITE_RUNTIMES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


def installed_tflite_runtimes() -> list[str]:
    return [
        name
        for name, module in TFLITE_RUNTIMES.items()
        if importlib.util.find_spec(module.split(".")[0])
    ]


def tflite_runners(path: Path) -> list[Runner]:
    """One runner per installed TFLite runtime: an export must agree with torch in each."""
    return [LiteRtRunner(path, runtime=name) for name in installed_tflite_runtimes()]


class LiteRtRunner:
    """A .tflite file in a TFLite interpreter, one sample per call as on a device."""

    def __init__(self, path: Path, *, runtime: str = "ai-edge-litert") -> None:
        self.name = runtime
        try:
            Interpreter = importlib.import_module(TFLITE_RUNTIMES[runtime]).Interpreter  # noqa: N806
        except (ImportError, KeyError) as exc:
            raise ValidationError(
                f"TFLite runtime {runtime!r} is not installed", where=str(path)
            ) from exc
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=1)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ValidationError(
                f"LiteRT cannot load {path.name}: {exc}", where=str(path)
            ) from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        rows = []
        for sample in x:
            self._interpreter.set_tensor(self._input["index"], _to_input(sample[None], self._input))
            self._interpreter.invoke()
            rows.append(
                _from_output(self._interpreter.get_tensor(self._output["index"]), self._output)
            )
        return np.concatenate(rows).astype(np.float32)

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        def describe(detail: dict[str, Any]) -> dict[str, Any]:
            scale, zero = detail.get("quantization", (0.0, 0))
            return {
                "name": detail["name"],
                "shape": [int(d) for d in detail["shape_signature"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "scale": float(scale) if scale else None,
                "zero_point": int(zero) if scale else None,
            }

        return {"inputs": [describe(self._input)], "outputs": [describe(self._output)]}


def _to_input(x: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and scale and x.dtype.kind == "f":  # a fully int8 input
        info = np.iinfo(dtype)
        quantized: npt.NDArray[Any] = np.clip(np.round(x / scale + zero), info.min, info.max)
        return quantized.astype(dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _from_output(y: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[np.float32]:
    scale, zero = detail.get("quantization", (0.0, 0))
    values: npt.NDArray[np.float32] = y.astype(np.float32)
    if y.dtype.kind in "iu" and scale:
        values = ((values - zero) * scale).astype(np.float32)
    return values
