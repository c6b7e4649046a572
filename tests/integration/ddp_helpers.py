"""What the DDP tests and bench share: the fleet's data stream from a real data set, produced as
devices' `DataBatch` records, and a job config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bus.log import DeliveryReport, open_log
from bus.protocol import DataBatch, encode_data
from models.workflow import prepare_data

SENSOR = {"in_channels": 6, "num_classes": 7}


def produce_watch(
    log_url: str, topic: str, *, records: int, per_record: int, partitions: int = 4
) -> set[tuple[int, int]]:
    """Windows of the smartwatch recordings (training side of the subject split), dealt in
    records of `per_record` samples, each keyed by its subject like a device sends them.
    Returns the (partition, offset) of every record written."""
    data = prepare_data("watch", seed=0).train
    order = np.random.default_rng(0).permutation(len(data))
    assert data.groups is not None
    log = open_log(log_url)
    log.create_topics({topic: partitions})
    producer = log.producer()
    produced: set[tuple[int, int]] = set()
    failed: list[str] = []

    def done(report: DeliveryReport) -> None:
        if report.error is not None or report.partition is None or report.offset is None:
            failed.append(str(report.error))
        else:
            produced.add((report.partition, report.offset))

    for index in range(records):
        rows = order[(index * per_record) % len(order) :][:per_record]
        device = f"subject-{int(data.groups[rows[0]]):02d}"
        payload = encode_data(
            DataBatch(fleet="farm", device_id=device, stream="imu", num_samples=len(rows)),
            {"x": data.x[rows], "y": data.y[rows]},
        )
        producer.produce(topic, payload, key=device.encode(), on_delivery=done)
        producer.poll(0)
    assert producer.flush(60) == 0
    producer.close()
    log.close()
    assert not failed, failed
    return produced


def ddp_config(
    path: Path,
    *,
    job: str,
    log_url: str,
    store_url: str,
    topic: str,
    seed: dict[str, Any] | None = None,
    **training: Any,
) -> Path:
    import yaml

    config = {
        "job": job,
        "log_url": log_url,
        "store_url": store_url,
        "topic": topic,
        "model": {"architecture": "cnn1d", "config": SENSOR, "input_shape": [6, 100]},
        "training": {"records_per_step": 2, "idle_stop_s": 3.0, "learning_rate": 0.02, **training},
        "checkpoint": {"every_steps": 10},
        "poll_s": 0.1,
        **({"seed": seed} if seed else {}),
    }
    path.write_text(yaml.safe_dump(config))
    return path
