"""`fleetlearn inspect FILE|-`: show what a message holds, or say in one line why it is not one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console
from rich.table import Table

from bus.errors import ProtocolError
from bus.protocol import Message, decode_message

_SOURCE_HELP = "A message file (as captured from MQTT, Kafka or the object store), or - for stdin."


def inspect_command(source: str = typer.Argument(..., help=_SOURCE_HELP)) -> None:
    """Decode a message and print its header and a summary of its tensors."""
    try:
        data = _read(source)
        message = decode_message(data)
    except ProtocolError as exc:
        _fail(f"{_name(source)} is not a valid fleetlearn message: {exc}")
    except OSError as exc:
        _fail(f"cannot read {_name(source)}: {exc.strerror or exc}")
    console = Console()
    console.print(_header_table(message))
    if message.tensors:
        console.print(_tensor_table(message.tensors))
    else:
        console.print("no tensors")


def _fail(line: str) -> NoReturn:
    typer.echo(f"error: {' '.join(line.split())}", err=True)
    raise typer.Exit(1)


def _name(source: str) -> str:
    return "stdin" if source == "-" else source


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


def _header_table(message: Message) -> Table:
    header = message.envelope.model_dump(mode="json")
    table = Table(title=f"{header.get('kind', '?')} message", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in header.items():
        if field == "tensors":
            continue  # summarised, with values, in the tensor table
        table.add_row(field, _render(value))
    return table


def _render(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _tensor_table(tensors: dict[str, npt.NDArray[Any]]) -> Table:
    table = Table(title=f"{len(tensors)} tensors")
    for column in ("name", "shape", "dtype", "L2 norm", "min", "max"):
        table.add_column(column, justify="left" if column in {"name", "dtype"} else "right")
    for name, array in tensors.items():
        table.add_row(name, str(list(array.shape)), str(array.dtype), *_summary(array))
    return table


def _summary(array: npt.NDArray[Any]) -> tuple[str, str, str]:
    if array.size == 0:
        return "0", "-", "-"
    values = array.astype(np.float64)
    norm = float(np.linalg.norm(values.ravel()))
    return f"{norm:.6g}", f"{values.min():.6g}", f"{values.max():.6g}"
