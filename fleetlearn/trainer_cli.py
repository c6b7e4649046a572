"""`fleetlearn trainer run`: open rounds, aggregate updates from the log, checkpoint, release."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bus.errors import FleetlearnError
from fleetlearn.service_cli import fail, start_service_command

trainer_app = typer.Typer(help="The cloud trainer (federated rounds).", no_args_is_help=True)


@trainer_app.command("run")
def run_command(
    config: Annotated[
        Path | None, typer.Option(help="trainer.yaml; FLEETLEARN_TRAINER__* override.")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: run).")
    ] = None,
) -> None:
    """Run until SIGTERM/SIGINT or `rounds.max_versions`; a restart resumes from the checkpoint."""
    from cloud_trainer.config import load_trainer_config
    from cloud_trainer.service import TrainerService

    stop = start_service_command()
    try:
        settings = load_trainer_config(config)
        service = TrainerService(settings)
    except (FleetlearnError, OSError) as exc:
        fail(exc)
    try:
        service.start()
        assert service.coordinator is not None
        typer.echo(
            f"trainer for {settings.model.name} at version {service.coordinator.version}: "
            f"{settings.log_url} → {settings.store_url}",
            err=True,
        )
        service.run(stop, max_seconds=seconds)
    except FleetlearnError as exc:
        fail(exc)
    finally:
        service.close()
    if service.coordinator is not None:
        typer.echo(f"stopped at version {service.coordinator.version}", err=True)
