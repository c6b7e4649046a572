"""Turning untrusted values into valid Samples, and counting (with bounded logging) the rest.

Shared by the file and MQTT collectors: every rejection names the field at fault, and a source
that sends nothing but garbage costs a few log lines a minute, not one per line.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bus.errors import ValidationError
from edge_agent.buffer import MAX_FEATURES, Sample

FLOAT32_MAX = float(np.finfo(np.float32).max)


def number(value: Any, where: str, *, float32: bool = False) -> float:
    """A finite number from a JSON number or a numeric string; `float32`: within its range."""
    if isinstance(value, bool):
        raise ValidationError(f"expected a number, got {value!r}", where=where)
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise ValidationError(f"not a number: {value!r}", where=where) from None
    else:
        raise ValidationError(f"expected a number, got {type(value).__name__}", where=where)
    if not math.isfinite(result):
        raise ValidationError(f"must be finite, got {value!r}", where=where)
    if float32 and abs(result) > FLOAT32_MAX:
        raise ValidationError(f"{value!r} is beyond float32's range", where=where)
    return result


def features(values: Sequence[Any], names: Sequence[str]) -> list[float]:
    """Feature values checked one by one; `names[i]` says where value i came from."""
    if not 1 <= len(values) <= MAX_FEATURES:
        raise ValidationError(
            f"a sample needs 1 to {MAX_FEATURES} features, got {len(values)}", where="features"
        )
    return [number(v, name, float32=True) for v, name in zip(values, names, strict=True)]


def make_sample(values: Sequence[float], label: float | None, *, at: float, stream: str) -> Sample:
    """A Sample from values already checked by `features` and `number`."""
    return Sample(np.asarray(values, dtype=np.float32), label, at, stream)


class Tally:
    """Counts one kind of trouble; logs the first `burst` of each `period_s`, then a summary.

    Thread-safe: the MQTT collector counts drops on the network thread.
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        collector: str,
        *,
        burst: int = 5,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = 0
        self._log = logger
        self._message = message
        self._collector = collector
        self._burst = burst
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since = clock()
        self._logged = 0
        self._quiet = 0

    def add(self, where: str, reason: str) -> None:
        with self._lock:
            self.count += 1
            now = self._clock()
            if now - self._since >= self._period_s:
                self._summarize()
                self._since, self._logged = now, 0
            if self._logged >= self._burst:
                self._quiet += 1
                return
            self._logged += 1
        self._log.warning(
            self._message,
            extra={"collector": self._collector, "where": where, "reason": reason},
        )

    def _summarize(self) -> None:
        if self._quiet:
            self._log.warning(
                f"{self._message} (more, not logged one by one)",
                extra={
                    "collector": self._collector,
                    "not_logged": self._quiet,
                    "period_s": self._period_s,
                },
            )
        self._quiet = 0
