"""The images under infra/docker/, read as files, and their entrypoint run for real with bash.

No Docker engine is needed. Each rule returns the problems it finds and is shown to find one in
a copy of the Dockerfile broken on purpose.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
IMAGES = {"cloud": DOCKER / "cloud.Dockerfile", "edge": DOCKER / "edge.Dockerfile"}
# What a device's default install must not pull in (docs/edge.md: no torch, no Kafka, no boto3).
NOT_ON_DEVICES = {"torch", "confluent-kafka", "boto3"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def base_images(text: str) -> list[str]:
    """The image of every FROM, its --platform flag and stage name left out."""
    images = []
    for word, args in instructions(text):
        if word == "FROM":
            images.append(next(a for a in args.split() if not a.startswith("--")))
    return images


def pin_problems(text: str) -> list[str]:
    stages = {m.lower() for m in re.findall(r"^FROM .* AS (\S+)", text, re.M | re.I)}
    problems = []
    for image in base_images(text):
        if image.lower() in stages:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2].partition("@")[0]
        if "@sha256:" not in image and (not tag or tag == "latest" or not re.search(r"\d", tag)):
            problems.append(f"FROM {image}: pin a version")
    return problems


def structure_problems(text: str) -> list[str]:
    """Multi-stage with the wheel from the builder, no secrets copied in, a non-root user and
    entrypoint.sh as the entrypoint."""
    steps = instructions(text)
    problems = []
    if len(base_images(text)) < 2 or not any(
        w == "COPY" and "--from=build" in a and "/wheels" in a for w, a in steps
    ):
        problems.append("not multi-stage: the wheel must come from a build stage")
    for word, args in steps:
        if word in ("COPY", "ADD") and ("secrets" in args or re.search(r"(^|\s)\.(\s|$)", args)):
            problems.append(f"{word} {args}: copies secrets, or the whole context")
    users = [a.split(":")[0] for w, a in steps if w == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append(f"runs as {users[-1] if users else 'root'}: add a non-root USER")
    entrypoints = [a for w, a in steps if w == "ENTRYPOINT"]
    if entrypoints != ['["/usr/local/bin/entrypoint.sh"]'] or not any(
        w == "COPY"
        and a.split()[-2:] == ["infra/docker/entrypoint.sh", "/usr/local/bin/entrypoint.sh"]
        for w, a in steps
    ):
        problems.append(f"ENTRYPOINT {entrypoints}: should be infra/docker/entrypoint.sh")
    return problems


def default_extras(text: str) -> list[str]:
    args = [a for w, a in instructions(text) if w == "ARG" and a.startswith("EXTRAS=")]
    assert len(args) == 1, "one ARG EXTRAS=… names what is installed"
    installs = [a for w, a in instructions(text) if w == "RUN" and "pip install" in a]
    assert len(installs) == 1, "one pip install, of the wheel with ${EXTRAS}"
    assert "[$EXTRAS]" in installs[0] or "[${EXTRAS}]" in installs[0]
    return args[0].removeprefix("EXTRAS=").split(",")


def installed_requirements(extras: list[str]) -> set[str]:
    """The distributions `fleetlearn[extras]` asks for, extras of extras followed."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional: dict[str, list[str]] = project["optional-dependencies"]
    names: set[str] = set()
    pending, seen = list(extras), set()
    for requirement in project["dependencies"]:
        names.add(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower())
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            name, _, rest = requirement.partition("[")
            if name == project["name"]:
                pending += rest.partition("]")[0].split(",")
            else:
                names.add(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower())
    return names


def test_base_images_are_pinned() -> None:
    for name, path in IMAGES.items():
        assert pin_problems(path.read_text()) == [], name
    assert base_images(IMAGES["cloud"].read_text())[-1].startswith("nvidia/cuda:12.")
    assert base_images(IMAGES["edge"].read_text())[-1].startswith("python:3.11")
    broken = "FROM python:latest AS build\nFROM build\nFROM ubuntu\nFROM nvidia/cuda\n"
    assert len(pin_problems(broken)) == 3


def test_images_are_multi_stage_non_root_with_the_entrypoint_and_no_secrets() -> None:
    for name, path in IMAGES.items():
        text = path.read_text()
        assert structure_problems(text) == [], name
    text = IMAGES["edge"].read_text()
    assert len(structure_problems(text.replace("USER fleetlearn", "USER root"))) == 1
    assert len(structure_problems(text.replace("USER fleetlearn\n", ""))) == 1
    assert len(structure_problems(text + "COPY infra/secrets /run/secrets\nCOPY . /src\n")) == 2
    assert len(structure_problems(text.replace('entrypoint.sh"]', 'fleetlearn"]'))) == 1
    single = re.sub(r"^FROM .* AS build$.*?^FROM ", "FROM ", text, flags=re.M | re.S)
    assert len(structure_problems(single)) == 1


def test_the_edge_image_installs_only_the_edge_extra_by_default() -> None:
    extras = default_extras(IMAGES["edge"].read_text())
    assert extras == ["edge"]
    assert {"paho-mqtt", "onnxruntime", "cryptography"} <= installed_requirements(extras)
    assert installed_requirements(extras) & NOT_ON_DEVICES == set()
    # The simulated devices' variant, or a careless default, would bring torch.
    assert installed_requirements(["edge", "edge-train", "data"]) & NOT_ON_DEVICES == {"torch"}
    assert "cloud" in default_extras(IMAGES["cloud"].read_text())


def test_dockerignore_keeps_local_state_secrets_and_tests_out() -> None:
    lines = [
        line.strip().strip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str, patterns: list[str]) -> bool:
        hits = [p for p in patterns if p.lstrip("!").strip("/") == path]
        return bool(hits) and not hits[-1].startswith("!")

    for path in (".venv", ".cache", "infra/secrets", "tests", ".git"):
        assert excluded(path, lines), path
    assert not excluded("infra/secrets", [*lines, "!infra/secrets"])
    # What the Dockerfiles copy is not excluded.
    for path in ("bus", "models", "edge_agent", "cloud_trainer", "fleetlearn", "infra/docker"):
        assert not any(path == p or path.startswith(p + "/") for p in lines), path


def run_entrypoint(
    tmp: Path, env: dict[str, str], *command: str
) -> subprocess.CompletedProcess[str]:
    """entrypoint.sh under bash with only `env` set, `command` being run from tmp/bin first."""
    path = f"{tmp / 'bin'}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *command],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def printed_env(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A secret file as compose mounts it (trailing newline included), and a fake `fleetlearn`
    on PATH that prints its environment."""
    path = tmp_path / "s3_secret_key"
    path.write_text("wJalr XUtn=FEMI$HOME'\n\n")
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "fleetlearn"
    fake.write_text("#!/bin/sh\nexec env\n")
    fake.chmod(0o755)
    return path


def test_entrypoint_exports_file_secrets_without_the_suffix(secret: Path, tmp_path: Path) -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY__FILE": str(secret),
        "FLEETLEARN_BRIDGE__MQTT_URL__FILE": str(secret),
        "FLEETLEARN_BRIDGE__CLIENT_ID": "bridge-1",
    }
    result = run_entrypoint(tmp_path, env, "env")
    assert result.returncode == 0, result.stderr
    seen = printed_env(result.stdout)
    assert seen["AWS_SECRET_ACCESS_KEY"] == "wJalr XUtn=FEMI$HOME'"
    assert seen["FLEETLEARN_BRIDGE__MQTT_URL"] == "wJalr XUtn=FEMI$HOME'"
    assert seen["FLEETLEARN_BRIDGE__CLIENT_ID"] == "bridge-1"
    assert not [name for name in seen if name.endswith("__FILE")]
    assert "FLEETLEARN_EDGE__DEVICE_ID" not in seen  # not a device


def test_entrypoint_names_the_variable_and_path_of_a_missing_secret(
    secret: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "absent"
    result = run_entrypoint(
        tmp_path, {"AWS_ACCESS_KEY_ID__FILE": str(missing), "OK__FILE": str(secret)}, "env"
    )
    assert result.returncode != 0
    assert result.stdout == ""  # the command never ran
    assert f"AWS_ACCESS_KEY_ID__FILE={missing}" in result.stderr
    both = run_entrypoint(tmp_path, {"X__FILE": str(secret), "X": "literal"}, "env")
    assert both.returncode != 0
    assert "X__FILE" in both.stderr


def test_entrypoint_names_an_edge_device_after_its_hostname(secret: Path, tmp_path: Path) -> None:
    edge = ("fleetlearn", "edge", "run", "--config", "/etc/fleetlearn/device.yaml")
    named = printed_env(run_entrypoint(tmp_path, {"HOSTNAME": "3f2a9c1b7d0e"}, *edge).stdout)
    assert named["FLEETLEARN_EDGE__DEVICE_ID"] == "3f2a9c1b7d0e"
    env = {"HOSTNAME": "3f2a9c1b7d0e", "FLEETLEARN_EDGE__DEVICE_ID": "pi-07"}
    assert printed_env(run_entrypoint(tmp_path, env, *edge).stdout)[
        "FLEETLEARN_EDGE__DEVICE_ID"
    ] == ("pi-07")
    bridge = run_entrypoint(tmp_path, {"HOSTNAME": "h"}, "fleetlearn", "bridge", "run")
    assert "FLEETLEARN_EDGE__DEVICE_ID" not in printed_env(bridge.stdout)


@pytest.mark.parametrize(
    "script", [ENTRYPOINT, REPO / "infra" / "scripts" / "init-secrets.sh"], ids=lambda p: p.name
)
def test_scripts_are_strict_executable_and_shellcheck_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")  # `make test` installs it (fleetlearn services install)
    assert shellcheck is not None, "shellcheck is missing: run `fleetlearn services install`"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK)
    assert shlex.split(script.read_text().splitlines()[0][2:]) == ["/usr/bin/env", "bash"]
