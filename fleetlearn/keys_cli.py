"""`fleetlearn keys generate`: the fleet's Ed25519 release key pair, written once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from bus.errors import FleetlearnError

keys_app = typer.Typer(help="Create the key that signs model releases.", no_args_is_help=True)


def _default_key_id() -> str:
    return f"fleet-{datetime.now(UTC):%Y%m%d}"


@keys_app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Option(help="Directory for {key-id}.key and {key-id}.pem.")],
    key_id: Annotated[
        str | None,
        typer.Option(
            help="Key id: names the files and every signed manifest.",
            show_default="fleet-<yyyymmdd>",
        ),
    ] = None,
) -> None:
    """Generate an Ed25519 release key pair; existing files are never overwritten."""
    from cloud_trainer.release.keys import generate_keypair

    try:
        paths = generate_keypair(out, key_id or _default_key_id())
    except FleetlearnError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"private key: {paths.private}")
    typer.echo(f"public key:  {paths.public}")
    typer.echo(
        f"Copy {paths.public.name} into every device's release key directory. "
        f"{paths.private.name} stays in the cloud secret store, for the trainer only: "
        "never copy it to a device or commit it."
    )
