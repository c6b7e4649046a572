"""`fleetlearn edge run` (the device daemon) and `fleetlearn edge predict` (a shell check)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from bus.errors import FleetlearnError
from fleetlearn.logging_setup import configure_logging

edge_app = typer.Typer(help="The device agent.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option(help="device.yaml; FLEETLEARN_EDGE__* variables override it.")
]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
    return typer.Exit(1)


@edge_app.command("run")
def run_command(
    config: ConfigOption = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: run).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    """Collect, train when selected, publish updates, follow releases; until SIGTERM."""
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import load_edge_config

    configure_logging(log_level.upper())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        settings = load_edge_config(config)
        agent = EdgeAgent(settings).start()
    except FleetlearnError as exc:
        raise _fail(exc) from None
    active = agent.models.active
    typer.echo(
        f"edge agent {settings.device_id} running: broker {agent.client.options.url}, "
        f"model {settings.model.name} "
        f"{'v' + str(active.version) if active else '(none yet)'}, "
        f"training {'on' if agent.trains else 'off'}",
        err=True,
    )
    try:
        agent.run(stop, max_seconds=seconds)
    finally:
        agent.close()


@edge_app.command("predict")
def predict_command(
    config: ConfigOption = None,
    values: Annotated[
        str | None, typer.Option(help="One sample: comma-separated feature values.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="Samples, one per line: CSV numbers or JSON arrays."),
    ] = None,
    buffered: Annotated[
        int, typer.Option(help="Score the newest N buffered samples against their labels.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Run the active model on samples: a quick check that the device serves what it should."""
    import numpy as np

    from edge_agent.buffer import SampleBuffer
    from edge_agent.config import load_edge_config
    from edge_agent.inference import Predictor
    from edge_agent.model_store import ModelStore

    try:
        settings = load_edge_config(config)
        store = ModelStore(settings.data_dir / "models", keep=settings.model.keep)
        installed = store.active(settings.model.name)
        if installed is None:
            raise typer.BadParameter(f"no active model {settings.model.name!r} on this device")
        predictor = Predictor(installed, settings.model.runtime)
        labels: list[float | None] = []
        if buffered:
            buffer = SampleBuffer(settings.data_dir / "buffer.db")
            samples = buffer.newest(buffered)
            buffer.close()
            rows = np.stack([s.features for s in samples]) if samples else np.zeros((0, 0))
            labels = [s.label for s in samples]
        elif values is not None:
            rows = np.array([[float(v) for v in values.split(",")]], np.float32)
        elif input_file is not None:
            rows = np.array([_parse_line(line) for line in _lines(input_file)], np.float32)
        else:
            raise typer.BadParameter("give --values, --input or --buffered")
        prediction = predictor.classify(rows)
    except (FleetlearnError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    correct = 0
    for i, (cls, probs) in enumerate(
        zip(prediction.classes, prediction.probabilities, strict=True)
    ):
        label = labels[i] if labels else None
        correct += int(label is not None and int(label) == int(cls))
        if as_json:
            typer.echo(
                json.dumps({"class": int(cls), "probability": float(probs[cls]), "label": label})
            )
        else:
            shown = "" if label is None else f"  label {int(label)}"
            typer.echo(f"{i}: class {int(cls)}  p={float(probs[cls]):.3f}{shown}")
    if labels and not as_json:
        typer.echo(
            f"model v{installed.version} ({predictor.runtime}): {correct}/{len(labels)} correct",
            err=True,
        )


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _parse_line(line: str) -> list[float]:
    text = line.strip()
    if text.startswith("["):
        return [float(v) for v in json.loads(text)]
    return [float(v) for v in text.split(",")]


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    edge_app()
