"""`fleetlearn bridge run`: carry device traffic into the log and rounds/releases back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bus.errors import FleetlearnError
from fleetlearn.service_cli import fail, start_service_command

bridge_app = typer.Typer(help="The MQTT ⇄ log bridge.", no_args_is_help=True)


@bridge_app.command("run")
def run_command(
    config: Annotated[
        Path | None, typer.Option(help="bridge.yaml; FLEETLEARN_BRIDGE__* override.")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: run).")
    ] = None,
) -> None:
    """Run until SIGTERM/SIGINT, then flush and acknowledge what the log has confirmed."""
    from bus.bridge.bridge import Bridge
    from bus.bridge.config import BridgeConfig
    from bus.config import load_config

    stop = start_service_command()
    try:
        settings = load_config(BridgeConfig, config, env_prefix="FLEETLEARN_BRIDGE")
        bridge = Bridge(settings).start()
    except FleetlearnError as exc:
        fail(exc)
    typer.echo(
        f"bridge {settings.client_id} running: {settings.mqtt_url} ⇄ {settings.log_url}", err=True
    )
    try:
        bridge.run(stop, max_seconds=seconds)
    finally:
        bridge.close()
