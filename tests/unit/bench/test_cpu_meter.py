"""The bench's CPU accounting attributes work to the part that did it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from bench.cpu import CpuMeter

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux /proc")


def spin(seconds: float) -> None:
    """Burn `seconds` of this thread's own CPU, whatever other threads of the process do."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_main_thread_other_threads_and_services_are_told_apart() -> None:
    service = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\ntime.sleep(30)",
        ]
    )
    try:
        meter = CpuMeter(services={"busy service": service.pid})
        meter.start()
        spin(0.2)
        worker = threading.Thread(target=spin, args=(0.2,))
        worker.start()
        worker.join()  # an ended thread still counts
        time.sleep(0.6)  # the service has spun by now
        used = meter.per_message(1000)
    finally:
        service.kill()
    assert used["bench main thread"] >= 150  # µs per message: 0.2 s over 1000 messages
    assert used["bench other threads"] >= 150
    assert used["busy service"] >= 150


def test_a_service_that_went_away_is_left_out() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    meter = CpuMeter(services={"gone": gone.pid})
    meter.start()
    gone.wait()
    assert "gone" not in meter.per_message(10)
