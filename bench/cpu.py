"""Where the CPU goes during a measurement: per process, and per thread of this one.

On a machine with few cores every process of a run (publisher, broker, Kafka, bridge)
competes for the same CPUs, so a throughput figure alone does not say whose cost it is.
This reads Linux's /proc counters before and after a measurement and reports CPU
microseconds per message for each part. Elsewhere it reports nothing.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(stat: Path) -> float:
    """utime + stime of one process or thread, from its stat line."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _own_process() -> dict[str, float]:
    """CPU seconds of this process: its main thread, and every other thread together
    (librdkafka's, paho's loop), including threads that have ended (getrusage counts them)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    main = _cpu_seconds(PROC / str(os.getpid()) / "task" / str(os.getpid()) / "stat")
    return {
        "bench main thread": main,
        "bench other threads": usage.ru_utime + usage.ru_stime - main,
    }


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # processes already waited for
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """Snapshot before a measurement, `per_message` after; services are named pids."""

    services: dict[str, int] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict, init=False)
    _gone: set[str] = field(default_factory=set, init=False)

    @property
    def available(self) -> bool:
        return (PROC / str(os.getpid()) / "task").is_dir()

    def _sample(self) -> dict[str, float]:
        sample: dict[str, float] = {"publisher process": _children()}
        sample.update(_own_process())
        for name, pid in self.services.items():
            try:
                sample[name] = _cpu_seconds(PROC / str(pid) / "stat")
            except OSError:
                self._gone.add(name)
        return sample

    def start(self) -> None:
        if self.available:
            self._start = self._sample()

    def per_message(self, messages: int) -> dict[str, float]:
        """CPU µs per message since `start`, for each part that used any."""
        if not self.available or not self._start:
            return {}
        end = self._sample()
        return {
            name: round((end[name] - self._start.get(name, 0.0)) / messages * 1e6, 1)
            for name in end
            if name not in self._gone and end[name] - self._start.get(name, 0.0) > 0
        }


def cpu_model() -> str:
    """The processor's name, for a result file: /proc/cpuinfo's model name where there is one."""
    cpuinfo = PROC / "cpuinfo"
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = (line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor())
