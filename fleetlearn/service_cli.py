"""What every long-running `fleetlearn … run` command shares: stop on a signal, one error line."""

from __future__ import annotations

import logging
import signal
import threading
from typing import NoReturn

import typer

from fleetlearn.logging_setup import configure_logging


def start_service_command() -> threading.Event:
    """Structured logs, and an event SIGTERM / SIGINT set so the service can stop cleanly."""
    configure_logging(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def fail(exc: BaseException) -> NoReturn:
    """Exit 1 with the error as one `error: …` line."""
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
    raise typer.Exit(1) from None
