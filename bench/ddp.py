"""DDP on the fleet's data stream: throughput with 1 and 2 processes, and checkpoint I/O
against a bare boto3 upload and download of the same bytes to the same server.

    .venv/bin/python -m bench.ddp [--records 2400] [--records-per-step 8] [--state-mb 64]
        [--repeats 3]

Starts its own Kafka and MinIO (as the tests do) and produces the smartwatch windows as
devices' `DataBatch` records (16 windows each) into a 4-partition topic. Then:

- throughput: `torchrun --standalone --nproc-per-node W -m fleetlearn.cli trainer ddp` for
  W = 1 and 2 (gloo on CPU, OMP_NUM_THREADS=1 per process), each over every record once,
  each rank taking `--records-per-step` records a step (weak scaling: the step grows with W);
  samples/s from the job's own "job finished" line (first to last step, checkpoints every 50
  steps included); scaling efficiency = (samples/s at 2) / (2 × samples/s at 1);
- checkpoint I/O: a `--state-mb` model state (float32 tensors) saved with
  `DdpCheckpoints.put_state` (torch.save + the store's S3 upload) and loaded with
  `DdpCheckpoints.state` (download, sha256 check, torch.load), against boto3's own
  `upload_fileobj` / `download_fileobj` of the same serialized bytes; MB/s and the ratio,
  median of `--repeats`. Goal: ≥ 0.9.

Writes bench/results/ddp.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bench.cpu import cpu_model
from bus.store import open_store
from cloud_trainer.ddp.checkpoint import DdpCheckpoints, Pointer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ddp.json"


def start_services(stack: ExitStack) -> tuple[str, Any]:
    from fleetlearn.services.kafka import KafkaService
    from fleetlearn.services.minio import MinioService

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ddp-")))
    kafka = KafkaService(workdir / "kafka")
    kafka.start()
    stack.callback(kafka.stop)
    minio = MinioService(workdir / "minio")
    minio.start()
    stack.callback(minio.stop)
    os.environ.update(
        AWS_ACCESS_KEY_ID=minio.access_key,
        AWS_SECRET_ACCESS_KEY=minio.secret_key,
        AWS_DEFAULT_REGION=minio.region,
    )
    return kafka.url, minio


def s3_client(minio: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
        region_name=minio.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def throughput(
    kafka_url: str, store_url: str, topic: str, world: int, workdir: Path, per_step: int
) -> dict[str, Any]:
    from tests.integration.ddp_helpers import ddp_config

    job = f"bench-{world}-{uuid.uuid4().hex[:6]}"
    config = ddp_config(
        workdir / f"{job}.yaml",
        job=job,
        log_url=kafka_url,
        store_url=store_url,
        topic=topic,
        records_per_step=per_step,
    )
    text = config.read_text().replace("every_steps: 10", "every_steps: 50")
    config.write_text(text)
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            str(world),
            "-m",
            "fleetlearn.cli",
            "trainer",
            "ddp",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {world} processes failed:\n{done.stderr[-3000:]}")
    finished = [
        json.loads(line)
        for line in (done.stdout + done.stderr).splitlines()
        if line.startswith("{") and '"job finished"' in line
    ]
    rank0 = next(f for f in finished if f["rank"] == 0)
    return {
        "processes": world,
        "steps": rank0["step"],
        "samples": rank0["samples"],
        "train_seconds": rank0["train_seconds"],
        "samples_per_s": rank0["samples_per_s"],
        "wall_seconds": wall,
    }


def checkpoint_io(minio: Any, bucket: str, state_mb: int, repeats: int) -> dict[str, Any]:
    """Ours (DdpCheckpoints through the S3 store) against boto3 alone, the same bytes."""
    count = state_mb * (1 << 20) // 4 // 8
    state = {"model": {f"w{i}": torch.randn(count) for i in range(8)}, "step": 1}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    size = len(buffer.getvalue())
    store = open_store(f"s3://{bucket}/ours?endpoint={minio.endpoint}&region={minio.region}")
    checkpoints = DdpCheckpoints(store, "bench")
    client = s3_client(minio)
    rows: dict[str, list[float]] = {
        "ours_save": [],
        "ours_load": [],
        "boto3_put": [],
        "boto3_get": [],
    }
    for attempt in range(repeats):
        began = time.perf_counter()
        key, sha = checkpoints.put_state(attempt + 1, state)
        rows["ours_save"].append(time.perf_counter() - began)
        pointer = Pointer(
            sequence=attempt + 1,
            step=1,
            world=1,
            restarts=0,
            offsets={},
            objects={key: sha},
            chain=[(attempt + 1, 1)],
        )
        began = time.perf_counter()
        checkpoints.state(pointer)
        rows["ours_load"].append(time.perf_counter() - began)

        began = time.perf_counter()
        payload = io.BytesIO()
        torch.save(state, payload)  # the same serialization work ours does
        payload.seek(0)
        client.upload_fileobj(payload, bucket, f"boto3/{attempt}.pt")
        rows["boto3_put"].append(time.perf_counter() - began)
        began = time.perf_counter()
        sink = io.BytesIO()
        client.download_fileobj(bucket, f"boto3/{attempt}.pt", sink)
        sink.seek(0)
        torch.load(sink, weights_only=True)  # and the same deserialization
        rows["boto3_get"].append(time.perf_counter() - began)
    median = {name: statistics.median(values) for name, values in rows.items()}
    mb = size / 1e6
    return {
        "bytes": size,
        "seconds": median,
        "mb_per_s": {name: mb / seconds for name, seconds in median.items()},
        "save_ratio": median["boto3_put"] / median["ours_save"],
        "restore_ratio": median["boto3_get"] / median["ours_load"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2400)
    parser.add_argument(
        "--records-per-step", type=int, default=8, help="per rank (16 windows each)"
    )
    parser.add_argument("--state-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console()
    from tests.integration.ddp_helpers import produce_watch

    with ExitStack() as stack:
        with console.status("starting Kafka and MinIO"):
            kafka_url, minio = start_services(stack)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3_client(minio).create_bucket(Bucket=bucket)
        store_url = f"s3://{bucket}/jobs?endpoint={minio.endpoint}&region={minio.region}"
        topic = f"bench-ddp-{uuid.uuid4().hex[:6]}"
        produce_watch(kafka_url, topic, records=args.records, per_record=16, partitions=4)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        runs = []
        for world in (1, 2):
            with console.status(f"training with {world} process(es)"):
                runs.append(
                    throughput(kafka_url, store_url, topic, world, workdir, args.records_per_step)
                )
        with console.status("checkpoint save / restore against boto3"):
            io_figures = checkpoint_io(minio, bucket, args.state_mb, args.repeats)
    efficiency = runs[1]["samples_per_s"] / (2 * runs[0]["samples_per_s"])
    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": "python -m bench.ddp " + " ".join(sys.argv[1:]),
        "records": args.records,
        "throughput": runs,
        "scaling_efficiency": efficiency,
        "checkpoint": io_figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title="DDP on the data stream (gloo, CPU)")
    for column in ("processes", "steps", "samples", "train s", "samples/s"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            str(run["processes"]),
            str(run["steps"]),
            str(run["samples"]),
            f"{run['train_seconds']:.2f}",
            f"{run['samples_per_s']:,.0f}",
        )
    console.print(table)
    io_table = Table(title=f"checkpoint I/O, {io_figures['bytes'] / 1e6:,.0f} MB state (median)")
    for column in ("side", "seconds", "MB/s"):
        io_table.add_column(column, justify="right")
    for name in ("ours_save", "boto3_put", "ours_load", "boto3_get"):
        io_table.add_row(
            name, f"{io_figures['seconds'][name]:.3f}", f"{io_figures['mb_per_s'][name]:,.0f}"
        )
    console.print(io_table)
    console.print(f"scaling efficiency 1 → 2 processes: {efficiency:.2f}")
    console.print(
        f"checkpoint save / boto3: {io_figures['save_ratio']:.2f}; "
        f"restore / boto3: {io_figures['restore_ratio']:.2f} (goal ≥ 0.9)"
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
