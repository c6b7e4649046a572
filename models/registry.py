"""The architectures by name: each name maps to a typed config, a builder and the input it takes.

A round announcement names a model and carries its config as plain values; `build_model` turns
those into a torch module on the device and in the cloud alike, so both sides build the same
parameter names and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, get_args

from pydantic import BaseModel
from torch import nn

from bus.errors import ConfigError
from models.architectures import (
    CNN1DConfig,
    CNNConfig,
    LogRegConfig,
    MLPConfig,
    TextClassifierConfig,
    build_cnn,
    build_cnn1d,
    build_logreg,
    build_mlp,
    build_textclf,
)
from models.config import ArchConfig, C, parse_config

InputKind = Literal["tabular", "sensor", "image", "text"]
INPUT_KINDS: tuple[str, ...] = get_args(InputKind)
# the wire's `Name` alphabet (lower case here), so a model name fits a topic and a header
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelSpec(Generic[C]):
    """One registered architecture.

    input_kind says what the model eats: tabular (batch, features) float32; sensor (batch,
    channels, window) float32; image (batch, channels, size, size) float32; text (batch,
    max_len) int64 token ids with 0 = padding.
    """

    name: str
    config_type: type[C]
    builder: Callable[[C], nn.Module]
    input_kind: InputKind

    def parse(self, config: Mapping[str, Any] | BaseModel | None = None) -> C:
        """The typed config; a ConfigError names the bad field."""
        return parse_config(self.config_type, config, where=f"models[{self.name!r}].config")

    def build(self, config: Mapping[str, Any] | BaseModel | None = None) -> nn.Module:
        """A fresh module (torch's default initialisation: seed torch first for repeatability)."""
        return self.builder(self.parse(config))


_REGISTRY: dict[str, ModelSpec[Any]] = {}


def register(
    name: str,
    config_type: type[C],
    builder: Callable[[C], nn.Module],
    input_kind: InputKind,
) -> ModelSpec[C]:
    """Add an architecture; a name may be registered once."""
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must match {_NAME.pattern}")
    if name in _REGISTRY:
        raise ConfigError(f"model name {name!r} is already registered")
    if input_kind not in INPUT_KINDS:
        raise ConfigError(f"model {name!r}: input_kind {input_kind!r} is not one of {INPUT_KINDS}")
    if not (isinstance(config_type, type) and issubclass(config_type, ArchConfig)):
        raise ConfigError(f"model {name!r}: config_type must be a subclass of ArchConfig")
    spec = ModelSpec(name, config_type, builder, input_kind)
    _REGISTRY[name] = spec
    return spec


def get_spec(name: str) -> ModelSpec[Any]:
    """The spec registered under `name`; a ConfigError lists the names there are."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def build_model(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> nn.Module:
    """Build the architecture `name` from its config (a mapping or the typed config)."""
    return get_spec(name).build(config)


def available_models() -> list[str]:
    """Registered names, in registration order."""
    return list(_REGISTRY)


register("logreg", LogRegConfig, build_logreg, "tabular")
register("mlp", MLPConfig, build_mlp, "tabular")
register("cnn1d", CNN1DConfig, build_cnn1d, "sensor")
register("cnn", CNNConfig, build_cnn, "image")
register("textclf", TextClassifierConfig, build_textclf, "text")
