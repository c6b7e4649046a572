"""The one `fleetlearn` command: a sub-command group per component, wired here and nowhere else."""

from __future__ import annotations

import typer

from fleetlearn.bridge_cli import bridge_app
from fleetlearn.demo.cli import demo_command
from fleetlearn.edge_cli import edge_app
from fleetlearn.inspect import inspect_command
from fleetlearn.keys_cli import keys_app
from fleetlearn.models_cli import models_app
from fleetlearn.services.cli import services_app
from fleetlearn.trainer_cli import trainer_app

app = typer.Typer(
    name="fleetlearn",
    help="Train models across a fleet of edge devices and the cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("demo")(demo_command)
app.command("inspect")(inspect_command)
app.add_typer(bridge_app, name="bridge")
app.add_typer(edge_app, name="edge")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(services_app, name="services")
app.add_typer(trainer_app, name="trainer")


if __name__ == "__main__":  # pragma: no cover - `python -m fleetlearn.cli`
    app()
