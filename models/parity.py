"""Parity and accuracy checks: an export is only released if its runtimes agree with torch.

Tolerances are per quantization mode: fp32 files must match torch to float rounding; int8
files are judged by how often they pick the same class and by the accuracy they lose on
held-out data, since their logits differ by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bus.errors import ValidationError


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None  # on logits; None = not compared (int8)
    min_agreement: float  # share of samples where argmax matches the reference
    max_accuracy_drop: float  # accuracy points (0..1) lost against the fp32 torch model


TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, min_agreement=0.999, max_accuracy_drop=0.001),
    "int8": Tolerance(max_abs=None, min_agreement=0.95, max_accuracy_drop=0.01),
}


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    quantization: str
    samples: int
    max_abs: float
    agreement: float
    accuracy: float
    reference_accuracy: float

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.accuracy

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"accuracy_drop": self.accuracy_drop}


class ParityError(ValidationError):
    """An export whose outputs or accuracy are outside tolerance; the message says by how much."""


def compare(
    reference: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    *,
    runtime: str,
    quantization: str,
) -> ParityReport:
    if reference.shape != candidate.shape:
        raise ParityError(
            f"{runtime} {quantization} outputs have shape {list(candidate.shape)}, "
            f"torch has {list(reference.shape)}",
            where="parity",
        )
    ref_class = reference.argmax(axis=1)
    cand_class = candidate.argmax(axis=1)
    return ParityReport(
        runtime=runtime,
        quantization=quantization,
        samples=len(labels),
        max_abs=float(np.max(np.abs(reference - candidate))) if reference.size else 0.0,
        agreement=float(np.mean(ref_class == cand_class)),
        accuracy=float(np.mean(cand_class == labels)),
        reference_accuracy=float(np.mean(ref_class == labels)),
    )


def enforce(report: ParityReport) -> None:
    """Raise a ParityError naming each limit the report breaks and by how much."""
    tolerance = TOLERANCES[report.quantization]
    problems = []
    if tolerance.max_abs is not None and report.max_abs > tolerance.max_abs:
        problems.append(f"max |Δlogit| {report.max_abs:.3g} > {tolerance.max_abs:.3g}")
    if report.agreement < tolerance.min_agreement:
        problems.append(
            f"argmax agrees on {report.agreement:.2%} of samples < {tolerance.min_agreement:.2%}"
        )
    if report.accuracy_drop > tolerance.max_accuracy_drop:
        limit = tolerance.max_accuracy_drop * 100
        problems.append(
            f"accuracy {report.accuracy:.4f} is {report.accuracy_drop * 100:.2f} points below "
            f"torch fp32 {report.reference_accuracy:.4f} (limit {limit:.1f})"
        )
    if problems:
        raise ParityError(
            f"{report.runtime} {report.quantization} on {report.samples} held-out samples: "
            + "; ".join(problems),
            where="parity",
        )
