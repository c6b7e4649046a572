"""`fleetlearn models train|export|check`: weights from real data, device files, parity proof."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from bus.errors import FleetlearnError

models_app = typer.Typer(
    help="Train, export and check the models devices run.", no_args_is_help=True
)
console = Console()


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
    raise typer.Exit(1)


@models_app.command("train")
def train_command(
    model: Annotated[str, typer.Option(help="Architecture: logreg, mlp, cnn, cnn1d, textclf.")],
    out: Annotated[Path, typer.Option(help="Weights file to write (safetensors).")],
    dataset: Annotated[str | None, typer.Option(help="Data set; default: the model's own.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the split and training.")] = 0,
) -> None:
    """Train an architecture on its real data set and write its weights."""
    from models.registry import get_spec
    from models.train import accuracy, fit
    from models.workflow import (
        DEFAULT_DATASET,
        WeightsFile,
        build_seeded,
        default_config,
        prepare_data,
        save_weights,
    )

    try:
        name = dataset or DEFAULT_DATASET[get_spec(model).name]
        split = prepare_data(name, seed=seed)
        config = default_config(model, split.train)
        module = build_seeded(model, config, seed)
        with console.status(f"training {model} on {name} ({len(split.train)} rows)"):
            fit(
                module,
                split.train.x,
                split.train.y,
                epochs=epochs,
                batch_size=64,
                lr=3e-3,
                seed=seed,
            )
        score = accuracy(module, split.test.x, split.test.y)
        save_weights(out, WeightsFile(module, model, config, name, seed), split.train.preprocessing)
    except FleetlearnError as exc:
        _fail(exc)
    console.print(f"{model} on {name}: held-out accuracy {score:.4f}; weights in {out}")


@models_app.command("export")
def export_command(
    model: Annotated[str, typer.Option(help="Architecture the weights belong to.")],
    weights: Annotated[Path, typer.Option(help="Weights file from `fleetlearn models train`.")],
    out: Annotated[Path, typer.Option(help="Directory for the files and manifest.json.")],
    fmt: Annotated[
        Literal["onnx", "tflite"], typer.Option("--format", help="onnx or tflite.")
    ] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also write a static int8 file.")] = False,
    version: Annotated[int, typer.Option(help="Model version in the manifest.")] = 1,
) -> None:
    """Export, check parity and accuracy on real held-out data, write the manifest."""
    from models.export.pipeline import ExportRequest, export_checked
    from models.manifest import write_manifest
    from models.workflow import load_weights, prepare_data

    try:
        loaded = load_weights(weights)
        if loaded.architecture != model:
            raise FleetlearnError(f"{weights} holds a {loaded.architecture!r} model, not {model!r}")
        split = prepare_data(loaded.dataset, seed=loaded.seed)
        request = ExportRequest(
            name=f"{model}-{loaded.dataset}",
            version=version,
            architecture=model,
            classes=list(split.test.classes),
            heldout_x=split.test.x,
            heldout_y=split.test.y,
            calibration_x=split.train.x[:256],
            preprocessing=split.train.preprocessing,
            int8=int8,
        )
        manifest = export_checked(loaded.module, request, out, formats=(fmt,))
        shutil.copyfile(weights, out / "weights.safetensors")
        digest = hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest()
        write_manifest(out, manifest.model_copy(update={"weights_sha256": digest}))
    except FleetlearnError as exc:
        _fail(exc)
    console.print(_checks_table(manifest.checks))
    console.print(f"wrote {', '.join(f.name for f in manifest.files)} and manifest.json to {out}")


@models_app.command("check")
def check_command(
    directory: Annotated[Path, typer.Argument(help="An exported model directory.")],
) -> None:
    """Re-run the parity and accuracy checks of an exported model against its torch weights."""
    from models.export.pipeline import check_directory

    try:
        reports = check_directory(directory)
    except FleetlearnError as exc:
        _fail(exc)
    console.print(_checks_table([r.as_dict() for r in reports]))
    console.print(f"{directory}: every file within tolerance")


def _checks_table(checks: list[dict[str, object]]) -> Table:
    table = Table(title="parity and accuracy on real held-out samples")
    for column in ("runtime", "mode", "samples", "max |Δ|", "agreement", "accuracy", "drop"):
        table.add_column(column, justify="right")
    for c in checks:
        table.add_row(
            str(c["runtime"]),
            str(c["quantization"]),
            str(c["samples"]),
            f"{c['max_abs']:.2e}",
            f"{c['agreement']:.4f}",
            f"{c['accuracy']:.4f}",
            f"{float(str(c['accuracy_drop'])) * 100:+.2f} pt",
        )
    return table
