"""`fleetlearn services install|up|down|status`: real local services without Docker."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetlearn.services import install, manager
from fleetlearn.services.base import ServiceError

services_app = typer.Typer(
    help="Run Mosquitto, Kafka and MinIO locally (no Docker) for development and tests.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

Names = Annotated[
    list[str] | None,
    typer.Argument(help="Services to act on (mosquitto, kafka, minio); all when omitted."),
]


def _names(names: list[str] | None) -> tuple[str, ...]:
    chosen = tuple(names or manager.SERVICE_NAMES)
    unknown = [n for n in chosen if n not in manager.SERVICE_NAMES]
    if unknown:
        err.print(
            f"error: unknown service(s) {', '.join(unknown)}; "
            f"known: {', '.join(manager.SERVICE_NAMES)}"
        )
        raise typer.Exit(2)
    return chosen


@services_app.command("install")
def install_command() -> None:
    """Install Mosquitto (apt), resolve the Kafka jars (Maven), build MinIO (go), and the
    shellcheck the tests lint the device install script with (apt); each once."""
    steps = {
        "mosquitto": install.ensure_mosquitto,
        "kafka": install.ensure_kafka_libs,
        "minio": install.ensure_minio,
        "shellcheck": install.ensure_shellcheck,
    }
    for name, step in steps.items():
        with console.status(f"installing {name}…"):
            try:
                path = step()
            except ServiceError as exc:
                err.print(f"error: {exc}")
                raise typer.Exit(1) from exc
        console.print(f"[green]✓[/] {name}: {path}")


@services_app.command("up")
def up_command(
    names: Names = None,
    random_ports: Annotated[
        bool, typer.Option(help="Use free ports instead of 1883, 9092 and 9000.")
    ] = False,
) -> None:
    """Start the services in the background and print the environment to use them."""
    try:
        with console.status("starting services…"):
            state = manager.up(_names(names), default_ports=not random_ports)
    except ServiceError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc
    _print_table(state)
    console.print("\n# environment for clients:")
    for svc in state.values():
        for key, value in svc.env.items():
            console.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@services_app.command("down")
def down_command(names: Names = None) -> None:
    """Stop the services started by `up`."""
    stopped = manager.down(_names(names))
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@services_app.command("status")
def status_command() -> None:
    """Show which services run, where, and whether they answer."""
    state = manager.load_state()
    if not state:
        console.print("no services recorded; start them with `fleetlearn services up`")
        raise typer.Exit(0)
    _print_table(state)
    if not all(svc.serving() for svc in state.values()):
        raise typer.Exit(1)


def _print_table(state: dict[str, manager.RunningService]) -> None:
    table = Table("service", "pid", "address", "state")
    for svc in state.values():
        status = "[green]serving[/]" if svc.serving() else "[red]down[/]"
        table.add_row(svc.name, str(svc.pid), f"{svc.host}:{svc.port}", status)
    console.print(table)
