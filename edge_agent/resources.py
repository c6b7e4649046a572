"""What the device can spare: CPU, memory, temperature and power, read from /proc and /sys.

Read directly rather than through psutil: a Pi's agent should not need a compiled dependency
for four numbers. Every reading is optional because platforms differ (a container has no
thermal zones, a Pi has no battery); the gate only acts on what the platform exposes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import GateConfig


@dataclass(frozen=True)
class Reading:
    cpu_percent: float | None
    memory_percent: float | None
    temperature_c: float | None
    on_battery: bool | None


class ResourceMonitor:
    """CPU use is a rate, so it is measured between two calls; the first call has none."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self._last_cpu: tuple[int, int] | None = None
        self._last_at = 0.0
        self._last_percent: float | None = None

    def read(self) -> Reading:
        return Reading(
            cpu_percent=self._cpu_percent(),
            memory_percent=self._memory_percent(),
            temperature_c=self._temperature(),
            on_battery=self._on_battery(),
        )

    def _cpu_percent(self) -> float | None:
        times = _cpu_times(self.root / "proc/stat")
        if times is None:
            return None
        now = time.monotonic()
        last, self._last_cpu = self._last_cpu, times
        if last is not None and times[1] > last[1] and now - self._last_at > 0.05:
            busy = times[0] - last[0]
            total = times[1] - last[1]
            self._last_percent = min(100.0, max(0.0, 100.0 * busy / total))
        if last is None or now - self._last_at > 0.05:
            self._last_at = now
        return self._last_percent

    def _memory_percent(self) -> float | None:
        try:
            fields = {
                line.split(":")[0]: int(line.split()[1])
                for line in (self.root / "proc/meminfo").read_text().splitlines()
                if ":" in line and len(line.split()) >= 2
            }
            total, available = fields["MemTotal"], fields["MemAvailable"]
        except (OSError, KeyError, ValueError):
            return None
        return None if total <= 0 else min(100.0, max(0.0, 100.0 * (total - available) / total))

    def _temperature(self) -> float | None:
        """The hottest thermal zone: the one that throttles first."""
        readings = []
        for zone in sorted((self.root / "sys/class/thermal").glob("thermal_zone*/temp")):
            try:
                readings.append(int(zone.read_text().strip()) / 1000.0)
            except (OSError, ValueError):
                continue
        return max(readings) if readings else None

    def _on_battery(self) -> bool | None:
        """On battery when a battery discharges, or when no mains/USB supply is online."""
        supplies = sorted((self.root / "sys/class/power_supply").glob("*"))
        batteries = [s for s in supplies if _read(s / "type") == "Battery"]
        if not batteries:
            return None
        if any(_read(b / "status") == "Discharging" for b in batteries):
            return True
        external = [s for s in supplies if _read(s / "type") in {"Mains", "USB", "USB_PD"}]
        if external:
            return not any(_read(s / "online") == "1" for s in external)
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_times(path: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate `cpu` line; iowait counts as idle."""
    try:
        first = path.read_text().splitlines()[0].split()
        values = [int(v) for v in first[1:]]
    except (OSError, IndexError, ValueError):
        return None
    if first[0] != "cpu" or len(values) < 4:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


def gate_reason(reading: Reading, gate: GateConfig) -> str | None:
    """Why training should wait now, or None to go ahead."""
    if reading.on_battery and not gate.allow_on_battery:
        return "on battery"
    if reading.temperature_c is not None and reading.temperature_c >= gate.max_temperature_c:
        return f"temperature {reading.temperature_c:.1f} °C ≥ {gate.max_temperature_c:.1f} °C"
    busy = gate.max_cpu_percent < 100  # 100 = never wait for the CPU: a reading tops out there
    if busy and reading.cpu_percent is not None and reading.cpu_percent >= gate.max_cpu_percent:
        return f"CPU busy {reading.cpu_percent:.0f}% ≥ {gate.max_cpu_percent:.0f}%"
    return None
