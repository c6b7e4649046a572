"""The edge agent's collectors: sources of samples (files, MQTT topics, data sets, plugins).

`build_collector(config, state_dir=...)` turns one collector config into a `Collector`; the
agent runs each one's `run(emit, stop)` in its own thread.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.collectors.base import Collector, Emit
from edge_agent.collectors.file_tail import FileCollector
from edge_agent.collectors.mqtt_topic import MqttCollector
from edge_agent.collectors.plugin import load_plugin
from edge_agent.collectors.replay import ReplayCollector
from edge_agent.config import (
    CollectorConfig,
    FileCollectorConfig,
    MqttCollectorConfig,
    PluginCollectorConfig,
    ReplayCollectorConfig,
)

__all__ = [
    "Collector",
    "Emit",
    "FileCollector",
    "MqttCollector",
    "ReplayCollector",
    "build_collector",
    "load_plugin",
]


def build_collector(config: CollectorConfig, *, state_dir: Path) -> Collector:
    """The collector `config.kind` names; a config it cannot use is a ConfigError now."""
    match config:
        case FileCollectorConfig():
            return FileCollector(config, state_dir=state_dir)
        case MqttCollectorConfig():
            return MqttCollector(config)
        case ReplayCollectorConfig():
            return ReplayCollector(config, state_dir=state_dir)
        case PluginCollectorConfig():
            return load_plugin(config)
