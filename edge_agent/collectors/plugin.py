"""Collectors from other packages, registered under the `fleetlearn.collectors` entry points.

A package declares, in its pyproject.toml,

    [project.entry-points."fleetlearn.collectors"]
    modbus = "my_package.collector:make"

and `make(options: dict, stream: str, name: str)` returns an object with `name` and
`run(emit, stop)`, as `edge_agent.collectors.base.Collector` describes.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from bus.errors import ConfigError
from edge_agent.collectors.base import Collector
from edge_agent.config import PluginCollectorConfig

GROUP = "fleetlearn.collectors"


def available() -> list[str]:
    """Names of the installed collector plugins."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_plugin(config: PluginCollectorConfig) -> Collector:
    """Find, load and call the plugin's factory; every failure is a ConfigError naming it."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == config.entry_point]
    if not found:
        names = ", ".join(available()) or "none installed"
        raise ConfigError(
            f"collector {config.name!r}: no entry point {config.entry_point!r} in group "
            f"{GROUP!r} (available: {names})"
        )
    entry = found[0]
    what = f"collector {config.name!r}: plugin {entry.name!r} ({entry.value})"
    # Plugin code may raise anything while importing or building; it surfaces as our error.
    try:
        factory = entry.load()
    except Exception as exc:
        raise ConfigError(f"{what} could not be imported: {exc!r}") from exc
    if not callable(factory):
        raise ConfigError(f"{what} is a {type(factory).__name__}, not a factory")
    try:
        collector = factory(dict(config.options), config.stream, config.name)
    except Exception as exc:
        raise ConfigError(f"{what} refused its options {config.options}: {exc!r}") from exc
    if not callable(getattr(collector, "run", None)):
        raise ConfigError(
            f"{what} returned a {type(collector).__name__}, which has no run(emit, stop)"
        )
    return collector  # type: ignore[no-any-return]
