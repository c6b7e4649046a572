"""`fleetlearn trainer run`: open rounds, aggregate updates from the log, checkpoint, release."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from bus.errors import FleetlearnError
from fleetlearn.logging_setup import configure_logging
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


@trainer_app.command("ddp")
def ddp_command(
    config: Annotated[
        Path | None, typer.Option(help="ddp.yaml; FLEETLEARN_DDP__* override.")
    ] = None,
) -> None:
    """One rank of a distributed job on the data stream; start it with torchrun
    (`torchrun --nproc-per-node 2 -m fleetlearn.cli trainer ddp --config ddp.yaml`)."""
    from cloud_trainer.ddp.config import load_ddp_config
    from cloud_trainer.ddp.job import run_ddp

    # No signal handlers: torchrun stops and restarts workers with SIGTERM, and a rank that
    # dies mid-step is exactly what the checkpoints are for.
    configure_logging(logging.INFO)
    try:
        settings = load_ddp_config(config)
        result = run_ddp(settings)
    except (FleetlearnError, OSError) as exc:
        fail(exc)
    if result.rank == 0:
        typer.echo(
            f"ddp job {settings.job}: step {result.step}, checkpoint {result.sequence}, "
            f"{result.world} ranks, {result.restarts} restarts, {result.rejected} records skipped",
            err=True,
        )
