"""infra/edge/install.sh, run for real under --root: venv, package, config, credentials, unit.

Offline and without root. The package comes from a wheel of this checkout zipped here from
pyproject's file list (pip would need hatchling, which the dev environment does not hold, to
build the source tree), installed with --no-deps --no-index. Its dependencies reach the device
venv through a .pth naming the dev environment's packages (its own fleetlearn left out); the
venv is made first for that and install.sh reuses it, as on a re-run. Making a venv is covered
by a run without them, which must stop at the check that the installed command starts.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from bus.urls import parse_url
from edge_agent.config import load_edge_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "edge" / "install.sh"
UNIT = REPO / "infra" / "edge" / "fleetlearn-edge.service"
PASSWORD = "p@ss w:rd/$HOME#1%"  # every character that needs quoting in a URL or a unit


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(out: Path) -> Path:
    """A py3-none-any wheel of the checkout: the packages, metadata and the console script."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    name, version = meta["name"], meta["version"]
    dist_info = f"{name}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(REPO).as_posix()] = path.read_bytes()
    lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
    lines += [f"Requires-Dist: {dep}\n" for dep in meta["dependencies"]]
    for extra, deps in meta["optional-dependencies"].items():
        lines.append(f"Provides-Extra: {extra}\n")
        lines += [f'Requires-Dist: {dep}; extra == "{extra}"\n' for dep in deps]
    scripts = "".join(f"{k} = {v}\n" for k, v in meta["scripts"].items())
    files[f"{dist_info}/METADATA"] = "".join(lines).encode()
    files[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLEARN_EDGE__")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Install:
    root: Path
    args: tuple[str, ...]
    first: subprocess.CompletedProcess[str]

    @property
    def venv(self) -> Path:
        return self.root / "opt/fleetlearn/venv"

    @property
    def conf(self) -> Path:
        return self.root / "etc/fleetlearn"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Install:
    tmp = tmp_path_factory.mktemp("install")
    root, keys = tmp / "root", tmp / "keys"
    keys.mkdir()
    (keys / "release-1.pem").write_text("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n")
    (tmp / "password").write_text(PASSWORD + "\n")
    venv = root / "opt/fleetlearn/venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dev environment's packages but its own fleetlearn, which pip would see as installed.
    deps = tmp / "dependencies"
    deps.mkdir()
    for site in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
        for entry in Path(site).iterdir():
            if "fleetlearn" not in entry.name and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    venv_site = next((venv / "lib").glob("python3.*/site-packages"))
    (venv_site / "_dependencies.pth").write_text(f"{deps}\n")
    args = (
        *("--root", str(root), "--no-systemd", "--device-id", "dev-1"),
        *("--mqtt-url", "mqtt://127.0.0.1:1883", "--username", "u"),
        *("--password-file", str(tmp / "password"), "--fleet", "f", "--model", "m"),
        *("--keys", str(keys), "--python", sys.executable, "--system-site-packages"),
        *("--source", str(wheel), "--pip-args", "--no-deps --no-index"),
    )
    return Install(root, args, _run(*args))


def test_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")  # `make test` installs it (fleetlearn services install)
    assert shellcheck is not None, "shellcheck is missing: run `fleetlearn services install`"
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_install_succeeds_and_says_where_logs_are(installed: Install) -> None:
    assert installed.first.returncode == 0, installed.first.stdout + installed.first.stderr
    assert "journalctl -u fleetlearn-edge -f" in installed.first.stdout
    assert PASSWORD not in installed.first.stdout + installed.first.stderr


def test_installed_command_runs_from_the_venv(installed: Install) -> None:
    python, command = installed.venv / "bin/python", installed.venv / "bin/fleetlearn"
    result = subprocess.run(
        [python, command, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    where = subprocess.run(
        [python, "-I", "-c", "import fleetlearn; print(fleetlearn.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)
    # Under --root the scripts name the on-device interpreter, for images and packages.
    assert command.read_text().splitlines()[0] == "#!/opt/fleetlearn/venv/bin/python"
    assert "include-system-site-packages = true" in (installed.venv / "pyvenv.cfg").read_text()


def test_device_yaml_validates_with_the_flags(installed: Install) -> None:
    config = load_edge_config(installed.conf / "device.yaml")
    assert (config.device_id, config.fleet, config.model.name) == ("dev-1", "f", "m")
    assert config.mqtt_url == "mqtt://127.0.0.1:1883"  # no credentials in the readable file
    assert config.model.keys_dir == Path("/etc/fleetlearn/keys")  # on-device paths
    assert config.data_dir == Path("/var/lib/fleetlearn")
    assert config.training.enabled is False  # installed without --train: no torch
    assert (installed.conf / "device.yaml").stat().st_mode & 0o777 == 0o644


def test_credentials_are_private_and_carry_the_login(installed: Install) -> None:
    credentials = installed.conf / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    lines = [ln for ln in credentials.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 1
    name, _, url = lines[0].partition("=")
    assert name == "FLEETLEARN_EDGE__MQTT_URL"
    assert url == f"mqtt://u:{quote(PASSWORD, safe='')}@127.0.0.1:1883"
    assert "$" not in url  # systemd would expand it in an EnvironmentFile
    parsed = parse_url(url, schemes=("mqtt", "mqtts"))
    assert (parsed.username, parsed.password, parsed.port) == ("u", PASSWORD, 1883)


def test_keys_and_data_dir(installed: Install) -> None:
    key = installed.conf / "keys/release-1.pem"
    assert key.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert (installed.root / "var/lib/fleetlearn").is_dir()
    assert (installed.conf / "device.example.yaml").is_file()


def test_unit_file_installed_with_on_device_paths(installed: Install) -> None:
    unit_path = installed.root / "etc/systemd/system/fleetlearn-edge.service"
    assert unit_path.read_bytes() == UNIT.read_bytes()
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_path.read_text())
    service = unit["Service"]
    assert service["ExecStart"] == (
        "/opt/fleetlearn/venv/bin/fleetlearn edge run --config /etc/fleetlearn/device.yaml"
    )
    assert service["User"] == "fleetlearn"
    assert service["EnvironmentFile"] == "-/etc/fleetlearn/credentials"
    assert service["Restart"] in ("always", "on-failure")
    assert service["ReadWritePaths"] == "/var/lib/fleetlearn"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_passes_systemd_analyze(installed: Install, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # a machine without systemd: the unit's key lines are checked above
        return
    # verify wants ExecStart's program to exist: point it at the one installed under --root.
    unit = tmp_path / "fleetlearn-edge.service"
    on_device = "ExecStart=/opt/fleetlearn/"
    text = UNIT.read_text()
    assert on_device in text
    unit.write_text(text.replace(on_device, f"ExecStart={installed.root}/opt/fleetlearn/"))
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_second_run_keeps_an_edited_config(installed: Install) -> None:
    config = installed.conf / "device.yaml"
    edited = config.read_text() + "heartbeat_s: 12\n"
    config.write_text(edited)
    again = _run(*installed.args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert config.read_text() == edited
    assert "keeping" in again.stdout
    assert load_edge_config(config).heartbeat_s == 12


def test_missing_device_id_is_named(tmp_path: Path) -> None:
    result = _run("--root", tmp_path, "--no-systemd", "--mqtt-url", "mqtt://127.0.0.1:1883")
    assert result.returncode != 0
    assert "--device-id" in result.stderr


def test_install_that_cannot_start_stops_before_the_config(tmp_path: Path, wheel: Path) -> None:
    """A fresh venv without the dependencies: made, filled, then refused with the reason."""
    result = _run(
        *("--root", tmp_path, "--no-systemd", "--device-id", "dev-2"),
        *("--mqtt-url", "mqtt://127.0.0.1:1883", "--model", "m", "--python", sys.executable),
        *("--source", wheel, "--pip-args", "--no-deps --no-index"),
    )
    assert result.returncode != 0
    assert "does not start" in result.stderr
    assert (tmp_path / "opt/fleetlearn/venv/bin/fleetlearn").is_file()
    assert not (tmp_path / "etc/fleetlearn/device.yaml").exists()
    assert not (tmp_path / "etc/systemd/system/fleetlearn-edge.service").exists()


def test_example_config_validates() -> None:
    config = load_edge_config(REPO / "infra" / "edge" / "device.example.yaml")
    assert [c.kind for c in config.collectors] == ["replay"]
    assert config.collectors[0].model_dump()["subject"] == 3
