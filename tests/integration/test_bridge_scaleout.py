"""Two bridges on one MQTT 5 shared subscription: the load is split, nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bus.bridge.bridge import Bridge
from bus.log import open_log
from tests.integration.bridge_helpers import (
    bridge_config,
    publish_all,
    read_ids,
    wait_until_bridging,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _forwarded(bridge: Bridge) -> float:
    value = bridge.metrics.registry.get_sample_value(
        "bridge_forwarded_total", {"channel": "update"}
    )
    return value or 0.0


def test_two_bridges_split_the_load_without_duplicates(mosquitto: Any, kafka: Any) -> None:
    first = bridge_config(mosquitto, kafka, share_group="bridges")
    second = first.model_copy(update={"client_id": f"{first.client_id}-b"})
    bridges = [Bridge(config).start() for config in (first, second)]
    stop = threading.Event()
    threads = [threading.Thread(target=b.run, args=(stop,), daemon=True) for b in bridges]
    for thread in threads:
        thread.start()
    try:
        prefix = bridges[0].prefix
        sent = publish_all(first.mqtt_url, prefix, first.fleet, devices=4, per_device=100)
        received = read_ids(open_log(kafka.url), first.topics.update, len(sent))
        shares = [_forwarded(b) for b in bridges]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for bridge in bridges:
            bridge.close()
    assert len(received) == len(sent) == 400  # no duplicates
    assert set(received) == sent
    assert sum(shares) == 400
    assert min(shares) >= 100, shares  # the broker alternates: each bridge carries a real share


def test_a_crashed_member_restarted_under_its_id_delivers_its_share(
    mosquitto: Any, kafka: Any, tmp_path: Path
) -> None:
    """Shared subscriptions do not fail over (FACTS.md): what the dead member held waits in
    its session until it returns under the same client id, then arrives."""
    first = bridge_config(mosquitto, kafka, share_group="bridges", downlink=False, max_inflight=50)
    second = first.model_copy(update={"client_id": f"{first.client_id}-b"})
    commands = []
    for name, config in (("a", first), ("b", second)):
        path = tmp_path / f"bridge-{name}.yaml"
        path.write_text(config.model_dump_json())
        commands.append(
            [sys.executable, "-m", "fleetlearn.cli", "bridge", "run", "--config", str(path)]
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stderr=subprocess.DEVNULL) for c in commands]
    try:
        wait_until_bridging(first, open_log(kafka.url))  # a member's subscription is in place
        result: dict[str, set[str]] = {}
        prefix = f"fleetlearn/{first.fleet}"
        publisher = threading.Thread(
            target=lambda: result.setdefault(
                "ids", publish_all(first.mqtt_url, prefix, first.fleet, 4, 150)
            )
        )
        publisher.start()
        time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        publisher.join(60)
        procs[1] = subprocess.Popen(commands[1], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        sent = result["ids"]
        received = read_ids(open_log(kafka.url), first.topics.update, len(sent), timeout=90)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    assert set(received) == sent  # every message arrived
    duplicated = [i for i, n in Counter(received).items() if n > 1]
    assert len(duplicated) <= 50  # only what the dead member had in flight can come twice
