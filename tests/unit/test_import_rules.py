"""The dependency rules of ARCHITECTURE.md, checked statically on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level names it must never import
FORBIDDEN = {
    "bus": {"torch", "models", "edge_agent", "cloud_trainer", "fleetlearn"},
    "models": {"edge_agent", "cloud_trainer", "fleetlearn"},
    "edge_agent": {
        "cloud_trainer",
        "fleetlearn",
        "confluent_kafka",
        "boto3",
        "botocore",
        "aws_msk_iam_sasl_signer",
    },
    "cloud_trainer": {"edge_agent", "fleetlearn"},
}


def imported_roots(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name, line in imported_roots(path):
            if name in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_import_rules(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom torch import nn\nfrom .x import y\n")
    assert ("torch", 2) in imported_roots(module)
    assert all(name != "x" for name, _ in imported_roots(module))


def test_device_extra_stays_slim() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    heavy = ("confluent-kafka", "boto3", "torch")
    for requirement in extras["edge"]:
        assert not requirement.startswith(heavy), f"edge extra pulls in {requirement}"
    assert any(r.startswith("torch") for r in extras["edge-train"])


def test_an_inference_only_device_runs_the_agent_without_torch() -> None:
    """What a Pi with only the `edge` extra imports for `fleetlearn edge run`: no torch, no
    Kafka client, no boto3 (set to None in sys.modules, so importing one fails)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'confluent_kafka', 'boto3', 'botocore', 'sklearn', 'jax'):\n"
        "    sys.modules[name] = None\n"
        "import fleetlearn.cli, fleetlearn.edge_cli, edge_agent.agent, edge_agent.collectors\n"
        "from edge_agent.agent import EdgeAgent\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
