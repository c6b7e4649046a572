"""`fleetlearn demo`: run the loop and show each round as it completes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bus.errors import FleetlearnError
from bus.protocol import CodecName
from fleetlearn.demo.loop import DemoConfig, RoundResult, run_demo


def demo_command(
    devices: Annotated[int, typer.Option(help="Simulated devices, one data shard each.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    codec: Annotated[CodecName, typer.Option(help="Update codec on the wire.")] = CodecName.INT8,
    compress: Annotated[bool, typer.Option(help="zstd-compress update payloads.")] = True,
    mqtt_url: Annotated[str | None, typer.Option(help="MQTT URL; default: embedded.")] = None,
    log_url: Annotated[str | None, typer.Option(help="kafka:// or sqlite://.")] = None,
    store_url: Annotated[str | None, typer.Option(help="s3:// or file://.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Keep log and store here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and training.")] = 0,
) -> None:
    """Federated logistic regression on the breast-cancer data shipped in scikit-learn:
    devices publish codec-encoded updates over MQTT, the bridge moves them into the log
    (acking MQTT after the log write), the aggregator averages them into a new global model
    in the object store."""
    console = Console()
    try:
        config = DemoConfig(
            devices=devices,
            rounds=rounds,
            codec=codec,
            compress=compress,
            mqtt_url=mqtt_url,
            log_url=log_url,
            store_url=store_url,
            workdir=workdir,
            seed=seed,
        )
        table = _table()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("federated rounds", total=rounds)

            def show(result: RoundResult) -> None:
                table.add_row(*_row(result))
                progress.advance(task)

            result = run_demo(config, on_round=show)
    except FleetlearnError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(table)
    console.print(
        f"accuracy on held-out rows: {result.baseline_accuracy:.3f} before training, "
        f"{result.rounds[-1].accuracy:.3f} after {rounds} rounds; "
        f"{len(result.rejected)} messages rejected; model: {result.rounds[-1].model_url}"
    )


def _table() -> Table:
    table = Table(title="fleetlearn demo: federated rounds over MQTT → log → aggregator")
    for name in ("round", "updates", "duplicates", "bytes/update", "test loss", "test acc"):
        table.add_column(name, justify="right")
    return table


def _row(result: RoundResult) -> list[str]:
    return [
        str(result.round),
        str(result.updates),
        str(result.duplicates),
        str(result.wire_bytes // max(1, result.updates)),
        f"{result.loss:.4f}",
        f"{result.accuracy:.3f}",
    ]
