"""Readings come from /proc and /sys where the platform has them; the gate acts only on those."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import GateConfig
from edge_agent.resources import Reading, ResourceMonitor, gate_reason


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pi(root: Path, *, busy: int, idle: int, on_mains: bool = True) -> None:
    write(root, "proc/stat", f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0\n")
    write(root, "proc/meminfo", "MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  250 kB\n")
    write(root, "sys/class/thermal/thermal_zone0/temp", "48500\n")
    write(root, "sys/class/thermal/thermal_zone1/temp", "61250\n")
    write(root, "sys/class/power_supply/BAT0/type", "Battery\n")
    write(root, "sys/class/power_supply/BAT0/status", "Charging\n" if on_mains else "Discharging\n")
    write(root, "sys/class/power_supply/AC/type", "Mains\n")
    write(root, "sys/class/power_supply/AC/online", "1\n" if on_mains else "0\n")


def test_readings_from_a_device_tree(tmp_path: Path) -> None:
    pi(tmp_path, busy=100, idle=900)
    monitor = ResourceMonitor(tmp_path)
    first = monitor.read()
    assert first.cpu_percent is None  # a rate needs two readings
    assert first.memory_percent == pytest.approx(75.0)
    assert first.temperature_c == pytest.approx(61.25)  # the hottest zone
    assert first.on_battery is False
    monitor._last_at -= 1  # as if a second had passed
    pi(tmp_path, busy=400, idle=1000, on_mains=False)
    second = monitor.read()
    assert second.cpu_percent == pytest.approx(75.0)  # 300 busy of 400 jiffies
    assert second.on_battery is True


def test_a_platform_without_sensors_reads_none(tmp_path: Path) -> None:
    reading = ResourceMonitor(tmp_path).read()
    assert reading == Reading(None, None, None, None)
    assert gate_reason(reading, GateConfig()) is None


def test_this_machine_reads_without_errors() -> None:
    reading = ResourceMonitor().read()
    assert reading.memory_percent is not None
    assert 0 <= reading.memory_percent <= 100


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (Reading(10, 50, 40, True), "on battery"),
        (Reading(10, 50, 80, False), "temperature 80.0 °C"),
        (Reading(95, 50, 40, None), "CPU busy 95%"),
        (Reading(10, 50, 40, False), None),
    ],
)
def test_the_gate(reading: Reading, reason: str | None) -> None:
    found = gate_reason(reading, GateConfig(max_cpu_percent=80, max_temperature_c=75))
    assert found == reason if reason is None else (found or "").startswith(reason)
    assert gate_reason(Reading(10, 50, 40, True), GateConfig(allow_on_battery=True)) is None


def test_a_cpu_limit_of_100_never_waits() -> None:
    """A reading tops out at 100 %, so 100 means "whatever the load", not "never train"."""
    assert gate_reason(Reading(100, 50, 40, False), GateConfig(max_cpu_percent=100)) is None
    assert gate_reason(Reading(100, 50, 40, False), GateConfig(max_cpu_percent=99)) is not None
