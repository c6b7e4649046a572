"""`fleetlearn inspect`: a summary for valid messages, one clear line and exit 1 for the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetlearn.cli import app
from tests.unit.bus.protocol_samples import samples

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("kind", ["update", "data", "status", "round", "release", "command"])
def test_valid_messages_print_header_and_tensors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "message.bin"
    path.write_bytes(samples(compress=True)[kind])
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{kind} message" in result.output
    if kind == "update":
        assert "fc.weight" in result.output
        assert "[3, 4]" in result.output
        assert "L2 norm" in result.output


def test_stdin_is_read_with_a_dash() -> None:
    result = CliRunner().invoke(app, ["inspect", "-"], input=samples(compress=False)["update"])
    assert result.exit_code == 0, result.output
    assert "pi-01" in result.output


@pytest.mark.parametrize(
    "data",
    [b"", b"not a message at all", samples(compress=False)["update"][:-5]],
)
def test_invalid_bytes_give_one_line_and_exit_1(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output


def test_missing_file_is_one_line() -> None:
    result = CliRunner().invoke(app, ["inspect", "/nonexistent/message.bin"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "error: cannot read /nonexistent/message.bin: No such file or directory"
    )


def test_console_script_on_garbage_has_no_traceback() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "fleetlearn.cli", "inspect", "-"],
        input=b"FLRN\x01\x00\x00\x00\xff\xff\xff\xff",
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    stderr = completed.stderr.decode()
    assert stderr.startswith("error: stdin is not a valid fleetlearn message: frame.header_length")
    assert "Traceback" not in stderr
