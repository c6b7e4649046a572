"""What a finished demo shows: a table per round, one per device, the accuracy plot, a JSON
summary, and the command that runs the same against real services."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from fleetlearn.demo.config import DemoConfig

if TYPE_CHECKING:
    from fleetlearn.demo.loop import DemoResult


def round_table(result: DemoResult) -> Table:
    config = result.config
    table = Table(
        title=f"{result.model}: {config.strategy}, {config.codec} updates; test = held-out "
        f"{config.plan.holdout} scored by the trainer",
    )
    for name in (
        "round",
        "updates",
        "kB/update",
        "fp32/wire",
        "train loss",
        "test loss",
        "test acc",
        "s",
    ):
        table.add_column(name, justify="right")
    table.add_row("v0", "-", "-", "-", "-", "-", f"{result.baseline_accuracy:.3f}", "-")
    for row in result.rounds:
        per_update = row.update_bytes / max(1, row.updates)
        ratio = row.dense_bytes / row.update_bytes if row.update_bytes else 0.0
        table.add_row(
            str(row.round),
            str(row.updates),
            f"{per_update / 1000:,.1f}",
            f"{ratio:.1f}x",
            "-" if row.train_loss is None else f"{row.train_loss:.3f}",
            f"{row.loss:.3f}",
            f"{row.accuracy:.3f}",
            f"{row.seconds:.1f}",
        )
    return table


def device_table(result: DemoResult) -> Table:
    table = Table(title="devices after the last round")
    for name in ("device", "samples", "model", "verified", "runtime", "held back", "acc"):
        table.add_column(name, justify="right" if name != "device" else "left")
    for device in result.devices:
        table.add_row(
            device.device_id,
            str(device.samples),
            "-" if device.version is None else f"v{device.version}",
            device.verified,
            device.runtime.removesuffix("runtime"),
            str(device.heldback),
            "-" if device.accuracy is None else f"{device.accuracy:.3f}",
        )
    return table


def plot_accuracy(result: DemoResult, path: Path) -> Path:
    """Held-out accuracy and loss per version (v0 = the untrained model) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = [0, *(r.version for r in result.rounds)]
    accuracy = [result.baseline_accuracy, *(r.accuracy for r in result.rounds)]
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    axis.plot(versions, accuracy, marker="o", label="held-out accuracy (trainer)")
    device = result.device_accuracy
    if device is not None:
        axis.scatter(
            [result.final_version],
            [device],
            marker="*",
            s=160,
            color="tab:orange",
            zorder=3,
            label="devices' held-back samples (on device)",
        )
    axis.set_xlabel("model version (federated round)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.set_xticks(versions)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    config = result.config
    axis.set_title(
        f"{result.model}: {len(result.devices)} devices, {config.chosen_partition} split, "
        f"{config.strategy}, {config.codec}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def summary(result: DemoResult) -> dict[str, Any]:
    return {
        "config": result.config.model_dump(mode="json"),
        "model": result.model,
        "fleet": result.fleet,
        "baseline_accuracy": result.baseline_accuracy,
        "final_accuracy": result.rounds[-1].accuracy if result.rounds else None,
        "device_accuracy": result.device_accuracy,
        "devices_on_final_version": result.devices_on_final,
        "rounds": [{k: v for k, v in asdict(r).items() if k != "files"} for r in result.rounds],
        "devices": [asdict(d) for d in result.devices],
        "release_files": result.release_files,
        "rejected": result.rejected,
        "seconds": result.seconds,
    }


def write_summary(result: DemoResult, path: Path) -> Path:
    path.write_text(json.dumps(summary(result), indent=2, default=str) + "\n")
    return path


def real_services_command(config: DemoConfig) -> str:
    """The same run against a real broker, log and store (placeholders for their addresses)."""
    options = [
        f"--dataset {config.dataset}",
        f"--devices {config.devices}",
        f"--rounds {config.rounds}",
        f"--strategy {config.strategy}",
        f"--codec {config.codec}",
        "--mqtt mqtt://BROKER:1883",
        "--log kafka://BROKER:9092",
        "--store 's3://BUCKET/demo?endpoint=http://S3:9000'",
    ]
    return "fleetlearn demo " + " ".join(options)
