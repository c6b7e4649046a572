"""The DDP job through real Kafka and MinIO: two gloo ranks under torchrun, one SIGKILLed
mid-run, torchrun restarting both from the checkpoint; every record trained exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bus.store import open_store
from cloud_trainer.ddp.checkpoint import DdpCheckpoints, RankRecord
from cloud_trainer.ddp.shards import from_ranges
from tests.integration.ddp_helpers import ddp_config, produce_watch
from tests.integration.edge_helpers import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


class Torchrun:
    """`torchrun --nproc-per-node 2 --max-restarts 1 -m fleetlearn.cli trainer ddp`, its
    JSON log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.process = subprocess.Popen(
            [
                str(TORCHRUN),
                "--standalone",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--monitor-interval",
                "0.5",
                "-m",
                "fleetlearn.cli",
                "trainer",
                "ddp",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,  # torchrun and its workers: one group to stop together
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line)
            if line.startswith("{"):
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    continue

    def logged(self, msg: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.lines)
            if e.get("msg") == msg and all(e.get(k) == v for k, v in fields.items())
        ]

    def worker(self, rank: int) -> int:
        """The pid of the worker process with RANK=rank (a child of torchrun's agent)."""
        for child in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if f"RANK={rank}".encode() in environ:
                    return int(pid)
        raise AssertionError(f"no worker with RANK={rank}")

    def tail(self) -> str:
        return "".join(self.raw[-60:])


def mean_loss(records: list[RankRecord]) -> float:
    return sum(r.loss_sum for r in records) / sum(r.samples for r in records)


def test_a_killed_rank_resumes_from_the_checkpoint_and_trains_each_record_once(
    kafka: Any, s3: Any, tmp_path: Path
) -> None:
    topic = f"ddp-{uuid.uuid4().hex[:8]}"
    produced = produce_watch(kafka.url, topic, records=400, per_record=16, partitions=4)
    assert len(produced) == 400
    bucket = s3.new_bucket()
    store_url = s3.url(bucket, "jobs")
    config = ddp_config(
        tmp_path / "ddp.yaml", job="har", log_url=kafka.url, store_url=store_url, topic=topic
    )
    run = Torchrun(config)
    try:
        assert eventually(lambda: bool(run.logged("checkpoint saved", sequence=2)), 120), run.tail()
        os.kill(run.worker(1), signal.SIGKILL)
        killed_at = max(e["step"] for e in run.logged("checkpoint saved"))
        assert run.process.wait(timeout=240) == 0, run.tail()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)  # workers too, if anything went wrong
    assert run.logged("resumed from checkpoint"), run.tail()  # torchrun restarted the ranks
    checkpoints = DdpCheckpoints(open_store(store_url), "har")
    pointer = checkpoints.pointer()
    assert pointer is not None
    assert pointer.restarts == 1
    assert pointer.step > killed_at  # it went on after the kill
    history = checkpoints.history(pointer)
    trained = [pair for record in history for pair in from_ranges(record.trained)]
    assert len(trained) == len(set(trained))  # none twice
    assert set(trained) == produced  # none left out
    assert pointer.offsets == {p: max(o for q, o in produced if q == p) + 1 for p in range(4)}
    # the loss falls: the first checkpoint's mean against the last ones'
    first = [r for r in history if r.samples][:2]
    last = [r for r in history if r.samples][-2:]
    assert mean_loss(last) < 0.7 * mean_loss(first)
