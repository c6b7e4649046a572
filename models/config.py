"""The base of every architecture's typed config, and the one place configs are parsed.

Configs are pydantic models (frozen, unknown fields rejected) so a round announcement or a
YAML file can carry them as plain mappings and get a clear error naming the bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

from bus.errors import ConfigError


class ArchConfig(BaseModel):
    """Base of the per-architecture configs: frozen and strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=ArchConfig)


def parse_config(
    config_type: type[C], value: Mapping[str, Any] | BaseModel | None, where: str
) -> C:
    """`value` as a `config_type`; a ConfigError names the first bad field under `where`.

    A config of another type is rejected rather than coerced: passing an MLP config to a CNN is a
    mistake, not a request to reinterpret fields that happen to share a name.
    """
    if isinstance(value, config_type):
        return value
    if isinstance(value, BaseModel):
        raise ConfigError(
            f"{where}: expected a {config_type.__name__} or a mapping, got a {type(value).__name__}"
        )
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got a {type(value).__name__}")
    try:
        return config_type.model_validate(dict(value or {}))
    except pydantic.ValidationError as exc:
        raise _config_error(exc, where) from exc


def _config_error(exc: pydantic.ValidationError, where: str) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"])
    message = f"{where}.{path}: {first['msg']}"
    if first["type"] not in {"missing", "extra_forbidden"}:
        message += f" (got {first.get('input')!r:.80})"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem(s)"
    return ConfigError(message)
