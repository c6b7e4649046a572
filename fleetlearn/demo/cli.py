"""`fleetlearn demo`: the whole loop, with a live view while it runs and the results after."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pydantic
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bus.errors import FleetlearnError
from bus.protocol import CodecName
from fleetlearn.demo.config import DatasetName, DemoConfig, DemoStrategy, Partition
from fleetlearn.demo.report import (
    device_table,
    plot_accuracy,
    real_services_command,
    round_table,
    write_summary,
)
from fleetlearn.services.base import cache_dir

if TYPE_CHECKING:  # the loop imports torch and the Kafka client: only `demo` itself loads it
    from fleetlearn.demo.loop import DemoResult
    from fleetlearn.demo.loop import Progress as RunProgress


def demo_command(
    dataset: Annotated[DatasetName, typer.Option(help="motion, mnist or tweets.")] = "motion",
    devices: Annotated[int, typer.Option(help="Devices, each a real edge agent.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds (released versions).")] = 10,
    strategy: Annotated[DemoStrategy, typer.Option(help="How updates are combined.")] = "fedavg",
    codec: Annotated[CodecName, typer.Option(help="Update codec on the wire.")] = CodecName.INT8,
    topk_ratio: Annotated[float, typer.Option(help="Share of entries top-k sends.")] = 0.05,
    compress: Annotated[bool, typer.Option(help="zstd-compress updates.")] = True,
    partition: Annotated[
        Partition | None,
        typer.Option(help="natural (a subject per device), iid or dirichlet [default: per set]"),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet label skew (smaller: more).")] = 0.3,
    epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 2,
    learning_rate: Annotated[
        float | None, typer.Option(help="Device SGD step [default: per data set]")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the shares and the model.")] = 0,
    mqtt: Annotated[
        str | None, typer.Option(help="MQTT URL [default: a broker for the run]")
    ] = None,
    log: Annotated[str | None, typer.Option(help="kafka:// or sqlite:// [default: SQLite]")] = None,
    store: Annotated[str | None, typer.Option(help="s3:// or file:// [default: a folder]")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where runs are kept.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
) -> None:
    """Federated learning end to end on one machine: devices replay real recordings, train
    locally and send compressed updates over MQTT; the bridge carries them into the log; the
    trainer validates, aggregates and releases signed ONNX models the devices verify, install
    and run on samples they kept back."""
    console = Console()
    try:
        config = DemoConfig(
            dataset=dataset,
            devices=devices,
            rounds=rounds,
            strategy=strategy,
            codec=codec,
            topk_ratio=topk_ratio,
            compress=compress,
            partition=partition,
            alpha=alpha,
            epochs=epochs,
            learning_rate=learning_rate,
            seed=seed,
            mqtt_url=mqtt,
            log_url=log,
            store_url=store,
            workdir=workdir,
            timeout_s=timeout,
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        typer.echo(f"error: {problems}", err=True)
        raise typer.Exit(1) from None
    try:
        with _native_stderr_to(_workdir(config) / "stderr.log"):
            result = _run_live(config, console)
    except FleetlearnError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _report(result, console)
    if not result.devices_on_final:
        typer.echo(f"error: not every device ended on verified v{result.final_version}", err=True)
        raise typer.Exit(1)


def _workdir(config: DemoConfig) -> Path:
    return config.workdir or cache_dir() / "demo"


@contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    """TensorFlow Lite, oneDNN and torch print start-up notes straight to file descriptor 2
    from native code; over a live display they are noise, so they go to a file of the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("ab") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _run_live(config: DemoConfig, console: Console) -> DemoResult:
    from fleetlearn.demo.loop import run_demo

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
    collecting = progress.add_task("devices collecting", total=config.devices)
    rounds = progress.add_task("federated rounds", total=config.rounds, visible=False)
    status = TextColumn("")
    line = Progress(status, console=console)
    info = line.add_task("", total=None)
    with Live(Group(progress, line), console=console, refresh_per_second=8, transient=False):

        def show(state: RunProgress) -> None:
            if state.phase == "collecting":
                progress.update(collecting, completed=state.reporting)
                return
            progress.update(collecting, completed=config.devices)
            progress.update(rounds, visible=True, completed=max(0, state.round - 1))
            if state.phase == "settling":
                progress.update(rounds, completed=config.rounds)
            accuracy = "-" if state.accuracy is None else f"{state.accuracy:.3f}"
            doing = (
                "devices installing the last release"
                if state.phase == "settling"
                else f"round {state.round}: {state.reporting}/{state.devices} devices reported"
            )
            line.update(
                info,
                description=f"{doing} · update bytes so far {state.update_bytes / 1000:,.0f} kB"
                f" · held-out accuracy {accuracy}",
            )

        return run_demo(config, on_progress=show)


def _report(result: DemoResult, console: Console) -> None:
    console.print(round_table(result))
    console.print(device_table(result))
    plot = plot_accuracy(result, result.run_dir / "accuracy.png")
    summary = write_summary(result, result.run_dir / "summary.json")
    device = result.device_accuracy
    final = result.rounds[-1] if result.rounds else None
    console.print(
        f"held-out accuracy {result.baseline_accuracy:.3f} (v0, untrained) → "
        f"{final.accuracy if final else result.baseline_accuracy:.3f} after "
        f"{len(result.rounds)} rounds"
        + ("" if device is None else f"; on the devices' held-back samples {device:.3f}")
        + f"; {len(result.rejected)} messages rejected; {result.seconds:.0f} s"
    )
    same = "all on" if result.devices_on_final else "NOT all on"
    console.print(f"devices: {same} verified v{result.final_version}")
    console.print(f"release v{result.final_version} ({result.model}):")
    for name, url in result.release_files.items():
        console.print(f"  {name}: {url}")
    console.print(f"plot: {plot}\nsummary: {summary}\nlogs: {result.run_dir / 'demo.log'}")
    console.print(f"native libraries' notes: {_workdir(result.config) / 'stderr.log'}")
    console.print(f"the same against real services:\n  {real_services_command(result.config)}")
