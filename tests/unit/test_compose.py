"""docker-compose.yml and everything it mounts, checked as files: no Docker engine is needed.

Each rule is a function that returns the problems it finds. Every test runs its rule on the
shipped files (no problems) and on a copy broken on purpose (the problem is found), so that no
rule passes because it cannot fail. The rules read the project's own config classes, CLI and
metric definitions, so a renamed option, port or metric shows up here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydantic
import pytest
import yaml

from bus.bridge.config import BridgeConfig
from bus.config import load_config
from bus.errors import FleetlearnError
from bus.mqtt.options import MqttOptions
from bus.store import open_store
from bus.store.claims import key_for
from bus.urls import parse_url
from cloud_trainer import config as trainer_config
from cloud_trainer.config import TrainerConfig
from cloud_trainer.release.keys import load_private_key
from edge_agent import config as edge_config
from edge_agent.collectors.replay import subject_rows
from edge_agent.config import EdgeConfig, ReplayCollectorConfig
from edge_agent.releases import load_public_keys

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
INIT_SECRETS = REPO / "infra" / "scripts" / "init-secrets.sh"
INIT_BROKER = REPO / "infra" / "mosquitto" / "init-broker.sh"
PROMETHEUS = REPO / "infra" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "infra" / "grafana"
FLEETLEARN = Path(sys.executable).with_name("fleetlearn")  # the venv's console script
# The files infra/mosquitto/init-broker.sh makes (the contract with its author).
BROKER_FILES = (
    "mqtt_ca.key",
    "mqtt_ca.crt",
    "mqtt_ca.crl",
    "mqtt_server.key",
    "mqtt_server.crt",
    "mosquitto_passwd",
    "mosquitto_dynsec.json",
    "mosquitto_services_passwd",
)
# Every character that needs quoting in a URL's user info, and one that is not ASCII.
BRIDGE_PASSWORD = "p@ss w:rd/#1%é?&$"
SIMULATOR_PASSWORD = "0123abcd"
# What `fleetlearn <subcommand>` reads, and the prefix of its environment overrides.
CONFIG_CLASSES: dict[str, tuple[type[pydantic.BaseModel], str]] = {
    "bridge": (BridgeConfig, "FLEETLEARN_BRIDGE"),
    "trainer": (TrainerConfig, trainer_config.ENV_PREFIX),
    "edge": (EdgeConfig, edge_config.ENV_PREFIX),
}
PUBLISHED = {8883: "mosquitto", 8884: "mosquitto", 3000: "grafana"}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture
def compose() -> dict[str, Any]:
    """A fresh copy for each test: tests break it freely."""
    return load_compose()


# --- reading the compose file --------------------------------------------------------------------


def services(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = c["services"]
    return result


def long_running(service: dict[str, Any]) -> bool:
    return service.get("restart") != "no"


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (named and anonymous volumes left out)."""
    mounts: dict[str, Path] = {}
    for entry in service.get("volumes", []):
        parts = str(entry).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/")):
            mounts[parts[1]] = (REPO / parts[0]).resolve()
    return mounts


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return [str(word) for word in cmd] if isinstance(cmd, list) else str(cmd).split()


def fleetlearn_services(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(c).items() if command(s)[:1] == ["fleetlearn"]}


def network_names(c: dict[str, Any]) -> dict[str, set[str]]:
    """Every name on the compose network -> the services answering to it (a name and aliases)."""
    names = {name: {name} for name in services(c)}
    for name, service in services(c).items():
        networks = service.get("networks") or {}
        if isinstance(networks, dict):
            for settings in networks.values():
                for alias in (settings or {}).get("aliases", []):
                    names.setdefault(alias, set()).add(name)
    return names


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(p) for p in service.get("expose", [])}
    for entry in service.get("ports", []):
        ports.add(
            int(entry["target"]) if isinstance(entry, dict) else int(str(entry).split(":")[-1])
        )
    return ports


def published_ports(c: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Host port -> (service, container port)."""
    published: dict[int, tuple[str, int]] = {}
    for name, service in services(c).items():
        for entry in service.get("ports", []):
            if isinstance(entry, dict):
                published[int(entry["published"])] = (name, int(entry["target"]))
            else:
                *host, target = str(entry).split(":")
                published[int(host[-1] if host else target)] = (name, int(target))
    return published


def secret_files(c: dict[str, Any]) -> dict[str, Path]:
    return {name: Path(spec["file"]) for name, spec in c.get("secrets", {}).items()}


def service_secrets(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def service_config(c: dict[str, Any], name: str) -> pydantic.BaseModel:
    """The config a fleetlearn service runs with: its mounted file, its compose environment
    (less the NAME__FILE secrets the entrypoint swaps in), loaded by the project's loader."""
    service = services(c)[name]
    cmd = command(service)
    model, prefix = CONFIG_CLASSES[cmd[1]]
    path = bind_mounts(service)[cmd[cmd.index("--config") + 1]]
    environ = {k: v for k, v in environment(service).items() if not k.endswith("__FILE")}
    if cmd[1] == "edge":
        environ.setdefault("FLEETLEARN_EDGE__DEVICE_ID", "0123456789ab")  # as the entrypoint
    return load_config(model, path, env_prefix=prefix, environ=environ)


def configs(c: dict[str, Any]) -> tuple[BridgeConfig, TrainerConfig, EdgeConfig]:
    bridge, trainer, device = (service_config(c, n) for n in ("bridge", "trainer", "device"))
    assert isinstance(bridge, BridgeConfig)
    assert isinstance(trainer, TrainerConfig)
    assert isinstance(device, EdgeConfig)
    return bridge, trainer, device


# --- the rules -----------------------------------------------------------------------------------


def restart_and_health_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services(c).items():
        if "restart" not in service:
            problems.append(f"{name}: no restart policy")
        check = service.get("healthcheck") or {}
        if long_running(service) and (not check.get("test") or check.get("disable")):
            problems.append(f"{name}: long-running without a health check")
        for dependency, spec in (service.get("depends_on") or {}).items():
            wanted = (
                "service_healthy"
                if long_running(services(c)[dependency])
                else "service_completed_successfully"
            )
            if spec.get("condition") != wanted:
                problems.append(f"{name}: depends on {dependency} without condition {wanted}")
    return problems


def build_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services(c).items():
        build = service.get("build")
        if build is None:
            continue
        context = REPO / build["context"]
        if not context.is_dir():
            problems.append(f"{name}: build context {build['context']} does not exist")
        elif not (context / build.get("dockerfile", "Dockerfile")).is_file():
            problems.append(f"{name}: Dockerfile {build.get('dockerfile')} does not exist")
    return problems


def documented_secret_names() -> set[str]:
    """Names the init scripts say they make, and the release key pair named by trainer.yaml."""
    text = INIT_SECRETS.read_text() + (INIT_BROKER.read_text() if INIT_BROKER.exists() else "")
    key_id = yaml.safe_load((REPO / "infra/trainer/trainer.yaml").read_text())["release"]["key_id"]
    return set(re.findall(r"[\w.-]+", text)) | {f"{key_id}.key", f"{key_id}.pem"}


def host_path_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    secrets_dir = (REPO / "infra" / "secrets").resolve()
    declared_volumes = set(c.get("volumes") or {})
    for name, service in services(c).items():
        for target, source in bind_mounts(service).items():
            if not source.exists():
                problems.append(f"{name}: mounts {source} at {target}, which does not exist")
            if source == secrets_dir or secrets_dir in source.parents:
                problems.append(f"{name}: bind-mounts {source}: secrets go through `secrets:`")
        for entry in service.get("volumes", []):
            parts = str(entry).split(":")
            named = len(parts) >= 2 and not parts[0].startswith((".", "/"))
            if named and parts[0] not in declared_volumes:
                problems.append(f"{name}: volume {parts[0]} is not declared")
    documented = documented_secret_names()
    for secret, path in secret_files(c).items():
        if path.parent.as_posix().removeprefix("./") != "infra/secrets":
            problems.append(f"secret {secret}: {path} is not in infra/secrets/")
        elif path.name not in documented:
            problems.append(f"secret {secret}: no init script makes {path.name}")
        if path.name == "mqtt_ca.key":
            problems.append(f"secret {secret}: the CA's key never leaves the host")
    for name, service in services(c).items():
        for secret in service_secrets(service):
            if secret not in secret_files(c):
                problems.append(f"{name}: secret {secret} is not declared")
    return problems


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|password=|AKIA[0-9A-Z]{16}", re.I)


def secret_literal_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services(c).items():
        mounted = service_secrets(service)
        for key, value in environment(service).items():
            if key.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                if secret == value or secret not in mounted:
                    problems.append(f"{name}: {key}={value} is not a secret of the service")
            elif SECRET_NAME.search(key):
                problems.append(f"{name}: {key} holds a literal; use {key}__FILE")
        text = json.dumps([service.get(k) for k in ("environment", "command", "healthcheck")])
        if SECRET_VALUE.search(text):
            problems.append(f"{name}: a credential is written in the compose file")
    return problems


def published_port_problems(c: dict[str, Any]) -> list[str]:
    published = published_ports(c)
    problems = [
        f"{service} publishes {port}: only {sorted(PUBLISHED)} are meant for the host"
        for port, (service, _) in published.items()
        if port not in PUBLISHED
    ]
    for port, service in PUBLISHED.items():
        if published.get(port) != (service, port):
            problems.append(f"{service} should publish {port}:{port}, got {published.get(port)}")
    return problems


def endpoint_problems(c: dict[str, Any], urls: dict[str, str]) -> list[str]:
    """Each URL's host is a compose service (or alias) listening on the URL's port."""
    problems = []
    names = network_names(c)
    for where, url in urls.items():
        parts = urlsplit(url)
        endpoint = parse_qs(parts.query).get("endpoint", [""])[0]
        if parts.scheme == "s3":
            parts = urlsplit(endpoint)
        default = {"mqtt": 1883, "mqtts": 8883, "http": 80}.get(parts.scheme)
        host, port = parts.hostname or "", parts.port or default
        if host not in names:
            problems.append(f"{where}: {url} names {host!r}, not a compose service")
        for service in sorted(names.get(host, ())):
            if port not in container_ports(services(c)[service]):
                problems.append(f"{where}: {url}: {service} does not listen on {port}")
    kafka_env = environment(services(c)["kafka"])
    for where, url in urls.items():
        if url.startswith("kafka://") and url[8:] not in kafka_env["KAFKA_ADVERTISED_LISTENERS"]:
            problems.append(f"{where}: {url} is not the address Kafka advertises")
    return problems


def config_urls(c: dict[str, Any]) -> dict[str, str]:
    bridge, trainer, device = configs(c)
    assert bridge.store_url is not None
    return {
        "bridge mqtt_url": bridge.mqtt_url,
        "bridge log_url": bridge.log_url,
        "bridge store_url": bridge.store_url,
        "trainer log_url": trainer.log_url,
        "trainer store_url": trainer.store_url,
        "device mqtt_url": device.mqtt_url,
    }


def metrics_endpoints(c: dict[str, Any]) -> dict[str, tuple[int | None, str]]:
    """fleetlearn service -> (metrics port, listen address) from its config."""
    bridge, trainer, device = configs(c)
    endpoints = {"bridge": (bridge.metrics_port, bridge.metrics_host)}
    endpoints["device"] = (device.metrics_port, device.metrics_host)
    for name in ("trainer", "trainer-gpu"):
        endpoints[name] = (trainer.metrics.prometheus_port, "0.0.0.0")  # always all interfaces
    return endpoints


def scrape_targets(prometheus: dict[str, Any]) -> list[tuple[str, int]]:
    targets = []
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets += [(host, int(dns["port"])) for host in dns["names"]]
    return targets


def scrape_problems(
    c: dict[str, Any], prometheus: dict[str, Any], endpoints: dict[str, tuple[int | None, str]]
) -> list[str]:
    problems = []
    names = network_names(c)
    scraped: dict[str, int] = {}
    for host, port in scrape_targets(prometheus):
        if host not in names:
            problems.append(f"scrape target {host}:{port} is not a compose service")
        for service in sorted(names.get(host, ())):
            scraped[service] = port
            if port not in container_ports(services(c)[service]):
                problems.append(f"scrape target {host}:{port}: {service} does not expose {port}")
    for service, (metrics_port, listen) in endpoints.items():
        if metrics_port is None:
            problems.append(f"{service}: its config serves no metrics")
            continue
        if listen not in ("0.0.0.0", "::"):
            problems.append(f"{service}: metrics on {listen} cannot be scraped from outside")
        if scraped.get(service) != metrics_port:
            problems.append(
                f"{service}: metrics on {metrics_port}, scraped at {scraped.get(service)}"
            )
        check = json.dumps(services(c)[service]["healthcheck"]["test"])
        if f":{metrics_port}/metrics" not in check:
            problems.append(f"{service}: the health check does not ask port {metrics_port}")
    return problems


def gpu_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    trainers = {n: s for n, s in fleetlearn_services(c).items() if command(s)[1] == "trainer"}
    gpu = [s for s in trainers.values() if "gpu" in s.get("profiles", [])]
    if len(gpu) != 1:
        return [f"{len(gpu)} trainer services in the gpu profile, want 1"]
    devices = gpu[0].get("deploy", {}).get("resources", {}).get("reservations", {})
    if not any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
        for d in devices.get("devices", [])
    ):
        problems.append("the gpu trainer reserves no nvidia device with capability gpu")
    # Two trainers of one model would count every update twice: no profile may start both.
    profiles = [set(s.get("profiles", [])) for s in trainers.values()]
    if any(not p for p in profiles) or any(
        a & b for i, a in enumerate(profiles) for b in profiles[i + 1 :]
    ):
        problems.append(f"two trainers can start together: profiles {profiles}")
    return problems


def help_problems(commands: list[list[str]]) -> list[str]:
    """Each command, with --help added, is accepted by the installed fleetlearn."""
    problems = []
    for cmd in commands:
        result = subprocess.run(
            [str(FLEETLEARN), *cmd[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            problems.append(f"{' '.join(cmd)}: {result.stdout}{result.stderr}")
    return problems


def config_load_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name in fleetlearn_services(c):
        try:
            service_config(c, name)
        except FleetlearnError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def consistency_problems(c: dict[str, Any]) -> list[str]:
    """What the bridge, the trainer and the devices must agree on to work together."""
    bridge, trainer, device = configs(c)
    problems = []
    if not bridge.fleet == trainer.fleet == device.fleet:
        problems.append(f"fleets differ: {bridge.fleet}, {trainer.fleet}, {device.fleet}")
    if bridge.topics != trainer.topics:
        problems.append("the bridge and the trainer name different Kafka topics")
    if device.model.name != trainer.model.name:
        problems.append(
            f"devices follow {device.model.name}, the trainer trains {trainer.model.name}"
        )
    for replay in device.collectors:
        if isinstance(replay, ReplayCollectorConfig) and (
            replay.dataset,
            replay.split_seed,
            replay.holdout,
        ) != (trainer.model.dataset, trainer.model.split_seed, trainer.model.holdout):
            problems.append("devices replay another split than the trainer holds out")
    key_id = trainer.release.key_id
    files = secret_files(c)
    trainer_key = trainer.release.private_key
    for name, service in fleetlearn_services(c).items():
        mounted = service_secrets(service)
        kind = command(service)[1]
        if kind == "trainer" and (
            trainer_key.parent != Path("/run/secrets")
            or trainer_key.name not in mounted
            or files[trainer_key.name].name != f"{key_id}.key"
        ):
            problems.append(f"{name}: {trainer_key} is not the secret {key_id}.key")
        if kind == "edge" and (
            device.model.keys_dir != Path("/run/secrets")
            or files.get(f"{key_id}.pem", Path()).name != f"{key_id}.pem"
            or f"{key_id}.pem" not in mounted
        ):
            problems.append(f"{name}: the release key {key_id}.pem is not in its keys_dir")
        if kind != "trainer" and any(files[s].suffix == ".key" for s in mounted):
            problems.append(f"{name}: holds a private key only a trainer needs")
    bucket_command = " ".join(command(services(c)["minio-init"]))
    for where, url in (("bridge", bridge.store_url), ("trainer", trainer.store_url)):
        bucket = urlsplit(url or "").hostname
        if not re.search(rf"mc mb --ignore-existing \w+/{bucket}\b", bucket_command):
            problems.append(f"{where}: bucket {bucket} is not created by minio-init")
    return problems


def claim_problems(bridge_store_url: str, trainer_store_url: str) -> list[str]:
    """The trainer resolves claim checks in its own store: the bridge's must lie inside it."""
    claim = open_store(bridge_store_url).url_for("claims/dev-1/0123.flrn")
    try:
        key_for(open_store(trainer_store_url), claim)
    except FleetlearnError as exc:
        return [str(exc)]
    return []


IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metrics(expr: str) -> set[str]:
    """The metric names in a PromQL expression: what is left once strings, label matchers,
    ranges, groupings, functions and keywords are taken out."""
    for pattern in (r'"(?:[^"\\]|\\.)*"', r"\{[^}]*\}", r"\[[^\]]*\]", GROUPING.pattern):
        expr = re.sub(pattern, " ", expr)
    return {
        m.group()
        for m in IDENTIFIER.finditer(expr)
        if m.group() not in PROMQL_WORDS and not expr[m.end() :].lstrip().startswith("(")
    }


def exported_metrics() -> set[str]:
    """Every series name the package exports, as prometheus_client names them."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    for package in ("bus", "models", "edge_agent", "cloud_trainer", "fleetlearn"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            if "prometheus_client" not in text:
                continue
            for kind, name in re.findall(
                r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(\w+)\"", text
            ):
                base = name.removesuffix("_total") if kind == "Counter" else name
                names |= {base + suffix for suffix in suffixes[kind]}
    return names


def dashboard_problems(dashboard: dict[str, Any], exported: set[str], uid: str) -> list[str]:
    problems = []
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        if panel.get("datasource", {}).get("uid") != uid:
            problems.append(f"panel {panel['title']!r}: not on the provisioned data source")
        for target in panel.get("targets", []):
            for metric in sorted(promql_metrics(target["expr"]) - exported):
                problems.append(f"panel {panel['title']!r}: {metric} is not exported by the code")
    return problems


def grafana_problems(
    c: dict[str, Any], datasources: dict[str, Any], providers: dict[str, Any]
) -> list[str]:
    problems = []
    grafana = services(c)["grafana"]
    mounts = bind_mounts(grafana)
    if mounts.get("/etc/grafana/provisioning") != (GRAFANA / "provisioning").resolve():
        problems.append("infra/grafana/provisioning is not mounted at /etc/grafana/provisioning")
    for provider in providers["providers"]:
        if mounts.get(provider["options"]["path"]) != (GRAFANA / "dashboards").resolve():
            problems.append(f"dashboards provider reads {provider['options']['path']}: not mounted")
    for source in datasources["datasources"]:
        problems += endpoint_problems(c, {f"data source {source['name']}": source["url"]})
        if not source["url"].startswith("http://prometheus:"):
            problems.append(f"data source {source['name']} is not the compose Prometheus")
    return problems


# --- the tests -----------------------------------------------------------------------------------


def test_every_service_restarts_and_long_running_ones_are_health_checked(
    compose: dict[str, Any],
) -> None:
    assert restart_and_health_problems(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["bridge"]["restart"]
    del broken["services"]["kafka"]["healthcheck"]
    broken["services"]["bridge"]["depends_on"]["minio-init"]["condition"] = "service_started"
    broken["services"]["device"]["depends_on"]["mosquitto"]["condition"] = "service_started"
    assert len(restart_and_health_problems(broken)) == 4


def test_every_build_context_and_dockerfile_exists(compose: dict[str, Any]) -> None:
    assert build_problems(compose) == []
    assert {s["build"]["dockerfile"] for s in services(compose).values() if "build" in s} == {
        "infra/docker/cloud.Dockerfile",
        "infra/docker/edge.Dockerfile",
    }
    compose["services"]["device"]["build"]["dockerfile"] = "infra/docker/device.Dockerfile"
    assert build_problems(compose) != []


def test_mounted_paths_exist_and_secrets_come_from_the_init_scripts(
    compose: dict[str, Any],
) -> None:
    assert host_path_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["bridge"]["volumes"].append("./infra/bridge/missing.yaml:/x.yaml:ro")
    broken["services"]["bridge"]["volumes"].append("./infra/secrets:/secrets:ro")
    broken["services"]["bridge"]["volumes"].append("undeclared:/data")
    broken["secrets"]["elsewhere"] = {"file": "./infra/bridge/bridge.yaml"}
    broken["secrets"]["made_by_nobody"] = {"file": "./infra/secrets/made_by_nobody"}
    broken["secrets"]["ca_key"] = {"file": "./infra/secrets/mqtt_ca.key"}
    broken["services"]["grafana"]["secrets"].append("undeclared_secret")
    assert len(host_path_problems(broken)) == 7


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    assert secret_literal_problems(compose) == []
    broken = copy.deepcopy(compose)
    bridge = broken["services"]["bridge"]["environment"]
    bridge["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"
    broken["services"]["device"]["environment"]["FLEETLEARN_EDGE__MQTT_URL"] = (
        "mqtt://simulator:hunter2@mosquitto:1883"
    )
    broken["services"]["grafana"]["environment"]["GF_SMTP_PASSWORD__FILE"] = "/run/secrets/smtp"
    assert len(secret_literal_problems(broken)) == 3


def test_only_device_mqtt_and_grafana_reach_the_host(compose: dict[str, Any]) -> None:
    assert published_port_problems(compose) == []
    published = published_ports(compose)
    assert 1883 not in published
    assert 9092 not in published
    broken = copy.deepcopy(compose)
    broken["services"]["mosquitto"]["ports"].append("1883:1883")
    broken["services"]["kafka"]["ports"] = [{"target": 9092, "published": 9092}]
    assert len(published_port_problems(broken)) == 2


def test_configs_talk_to_compose_services_on_their_ports(compose: dict[str, Any]) -> None:
    urls = config_urls(compose)
    assert endpoint_problems(compose, urls) == []
    wrong = {
        **urls,
        "bridge mqtt_url": "mqtt://mosquitto:1884",
        "trainer log_url": "kafka://k:9092",
    }
    assert len(endpoint_problems(compose, wrong)) == 3  # port, host, and not advertised
    compose["services"]["minio"]["expose"] = ["9001"]
    assert len(endpoint_problems(compose, urls)) == 2


def test_prometheus_scrapes_every_metrics_port_the_configs_set(compose: dict[str, Any]) -> None:
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    endpoints = metrics_endpoints(compose)
    assert scrape_problems(compose, prometheus, endpoints) == []
    assert {host for host, _ in scrape_targets(prometheus)} >= {"bridge", "trainer", "device"}
    broken = copy.deepcopy(prometheus)
    broken["scrape_configs"][0]["static_configs"][0]["targets"] = ["bridge:9465"]
    broken["scrape_configs"] = [j for j in broken["scrape_configs"] if j["job_name"] != "device"]
    assert len(scrape_problems(compose, broken, endpoints)) == 3  # not exposed, wrong, unscraped
    local = {**endpoints, "device": (9464, "127.0.0.1")}
    assert len(scrape_problems(compose, prometheus, local)) == 1


def test_the_gpu_profile_runs_the_trainer_on_nvidia_devices(compose: dict[str, Any]) -> None:
    assert gpu_problems(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0][
        "driver"
    ]
    assert len(gpu_problems(broken)) == 1
    broken = copy.deepcopy(compose)
    del broken["services"]["trainer"]["profiles"]  # would start beside the gpu one
    assert len(gpu_problems(broken)) == 1


def test_every_fleetlearn_command_is_one_the_cli_accepts(compose: dict[str, Any]) -> None:
    assert FLEETLEARN.exists(), f"{FLEETLEARN} missing: the test runs from the project venv"
    commands = {tuple(command(s)) for s in fleetlearn_services(compose).values()}
    assert {cmd[1] for cmd in commands} == {"bridge", "trainer", "edge"}
    assert help_problems([list(cmd) for cmd in sorted(commands)]) == []
    assert len(help_problems([["fleetlearn", "bridge", "run", "--confg", "x.yaml"]])) == 1


def test_mounted_configs_load_with_the_compose_environment(compose: dict[str, Any]) -> None:
    assert config_load_problems(compose) == []
    compose["services"]["bridge"]["environment"]["FLEETLEARN_BRIDGE__METRICS_PORTT"] = 1
    assert len(config_load_problems(compose)) == 1


def test_bridge_trainer_and_devices_agree(compose: dict[str, Any]) -> None:
    assert consistency_problems(compose) == []
    env = compose["services"]["device"]["environment"]
    env["FLEETLEARN_EDGE__MODEL__NAME"] = "other"
    env["FLEETLEARN_EDGE__MODEL__KEYS_DIR"] = "/etc/keys"
    compose["services"]["bridge"]["secrets"].append("fleet.key")
    assert len(consistency_problems(compose)) == 3


def test_the_simulated_device_plays_a_subject_on_the_training_side() -> None:
    _, trainer, device = configs(load_compose())
    replay = device.collectors[0]
    assert isinstance(replay, ReplayCollectorConfig)
    assert len(subject_rows(replay)) > trainer.rounds.training.batch_size
    with pytest.raises(FleetlearnError, match="has no subject 5"):
        subject_rows(replay.model_copy(update={"subject": 5}))  # held out by the trainer


def test_the_trainer_finds_the_bridges_claim_checks(compose: dict[str, Any]) -> None:
    bridge, trainer, _ = configs(compose)
    assert bridge.store_url is not None
    assert claim_problems(bridge.store_url, trainer.store_url) == []
    elsewhere = "s3://fleetlearn/bridge?endpoint=http://minio:9000"
    assert len(claim_problems(elsewhere, trainer.store_url)) == 1


def test_grafana_reads_prometheus_and_the_dashboard_uses_real_metrics(
    compose: dict[str, Any],
) -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/fleetlearn.yaml").read_text())
    dashboard = json.loads((GRAFANA / "dashboards/fleet.json").read_text())
    exported = exported_metrics()
    assert {"bridge_received_total", "trainer_model_version", "edge_connected"} <= exported
    uid = datasources["datasources"][0]["uid"]
    assert grafana_problems(compose, datasources, providers) == []
    assert dashboard_problems(dashboard, exported, uid) == []
    used = set().union(
        *(promql_metrics(t["expr"]) for p in dashboard["panels"] for t in p.get("targets", []))
    )
    assert {"bridge_latency_seconds_bucket", "trainer_updates_rejected_total"} <= used
    assert {"edge_outbox_messages", "trainer_heldout_accuracy", "bridge_inflight"} <= used

    broken = copy.deepcopy(dashboard)
    broken["panels"][1]["targets"][0]["expr"] = 'sum(rate(bridge_recieved_total{a="b"}[5m]))'
    broken["panels"][2]["datasource"] = {"type": "prometheus", "uid": "other"}
    assert len(dashboard_problems(broken, exported, uid)) == 2
    datasources["datasources"][0]["url"] = "http://prometheus:9091"
    providers["providers"][0]["options"]["path"] = "/var/lib/grafana/dashboards"
    assert len(grafana_problems(compose, datasources, providers)) == 2


def test_promql_metric_names_are_told_from_functions_labels_and_numbers() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y"}[$__rate_interval]))) '
        '/ on (model) group_left count_values("v", b) * 1e3 > bool c offset 5m'
    )
    assert promql_metrics(expr) == {"a_bucket", "b", "c"}


# --- infra/scripts/init-secrets.sh, run for real with a stand-in for init-broker.sh --------------

STUB_BROKER = f"""#!/usr/bin/env bash
set -euo pipefail
[[ $1 == --secrets ]]
printf '%s\\n' "$@" >"$2/../broker.args"
for name in {" ".join(BROKER_FILES)}; do
    [[ -e $2/$name ]] || echo stub >"$2/$name"
done
[[ -e $2/mqtt_bridge_password ]] || printf '%s\\n' '{BRIDGE_PASSWORD}' >"$2/mqtt_bridge_password"
[[ -e $2/mqtt_simulator_password ]] ||
    printf '%s\\n' '{SIMULATOR_PASSWORD}' >"$2/mqtt_simulator_password"
"""


def run_init_secrets(tmp: Path, *, cli: str) -> subprocess.CompletedProcess[str]:
    broker = tmp / "init-broker.sh"
    broker.write_text(STUB_BROKER)
    broker.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "FLEETLEARN_INIT_BROKER": str(broker),
        "FLEETLEARN_CLI": cli,
        "FLEETLEARN_UID": str(os.getuid()),
        "FLEETLEARN_GID": str(os.getgid()),
    }
    return subprocess.run(
        ["bash", str(INIT_SECRETS), "--secrets", str(tmp / "secrets"), "--hostname", "fleet.test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def uncreated_secrets(c: dict[str, Any], directory: Path) -> list[str]:
    return [
        f"{name}: {path.name} was not created"
        for name, path in secret_files(c).items()
        if not (directory / path.name).is_file()
    ]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("init-secrets")
    first = run_init_secrets(tmp, cli=str(FLEETLEARN))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "fleetlearn keys generate" in first.stdout
    return tmp


def test_init_secrets_creates_every_secret_compose_reads(
    compose: dict[str, Any], initialised: Path
) -> None:
    secrets = initialised / "secrets"
    assert uncreated_secrets(compose, secrets) == []
    compose["secrets"]["forgotten"] = {"file": "./infra/secrets/forgotten"}
    assert len(uncreated_secrets(compose, secrets)) == 1
    assert (initialised / "broker.args").read_text().split() == [
        "--secrets",
        str(secrets),
        "--hostname",
        "fleet.test",
    ]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    key_id = configs(compose)[1].release.key_id
    modes = {name: stat.S_IMODE((secrets / name).stat().st_mode) for name in os.listdir(secrets)}
    for name in ("s3_access_key", "s3_secret_key", f"{key_id}.key", "bridge_mqtt_url"):
        assert modes[name] == 0o600, name
        assert (secrets / name).stat().st_uid == os.getuid()
    assert modes[f"{key_id}.pem"] == modes["grafana_admin_password"] == 0o644
    assert len((secrets / "s3_secret_key").read_text()) == 64


def test_init_secrets_writes_the_config_urls_with_the_service_passwords(
    compose: dict[str, Any], initialised: Path
) -> None:
    bridge, _, device = configs(compose)
    secrets = initialised / "secrets"
    for config_url, file, user, password in (
        (bridge.mqtt_url, "bridge_mqtt_url", "bridge", BRIDGE_PASSWORD),
        (device.mqtt_url, "device_mqtt_url", "simulator", SIMULATOR_PASSWORD),
    ):
        url = (secrets / file).read_text()
        assert parse_url(url, schemes=("mqtt", "mqtts")).password == password
        assert MqttOptions.from_url(url, client_id="c") == replace(
            MqttOptions.from_url(config_url, client_id="c"), username=user, password=password
        )


def test_init_secrets_release_keys_load_and_pair_up(
    compose: dict[str, Any], initialised: Path
) -> None:
    key_id = configs(compose)[1].release.key_id
    secrets = initialised / "secrets"
    private = load_private_key(secrets / f"{key_id}.key")
    public = load_public_keys(secrets)[key_id]
    assert public.public_bytes_raw() == private.public_key().public_bytes_raw()


def test_init_secrets_never_overwrites(initialised: Path) -> None:
    before = snapshot(initialised / "secrets")
    again = run_init_secrets(initialised, cli=str(FLEETLEARN))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" not in again.stdout
    assert snapshot(initialised / "secrets") == before


def test_init_secrets_makes_the_same_key_formats_with_openssl(tmp_path: Path) -> None:
    result = run_init_secrets(tmp_path, cli="")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "made with openssl" in result.stdout
    key_id = yaml.safe_load((REPO / "infra/trainer/trainer.yaml").read_text())["release"]["key_id"]
    private = load_private_key(tmp_path / "secrets" / f"{key_id}.key")
    public = load_public_keys(tmp_path / "secrets")[key_id]
    assert public.public_bytes_raw() == private.public_key().public_bytes_raw()
    assert stat.S_IMODE((tmp_path / "secrets" / f"{key_id}.pem").stat().st_mode) == 0o644
