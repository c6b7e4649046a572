"""Typed configuration from a YAML file plus environment overrides, read once at the CLI.

Each component declares a pydantic model; this module only loads and validates. Environment
variables override the file: ``{PREFIX}__SECTION__FIELD=value`` sets ``section.field`` (the double
underscore separates levels, as in pydantic-settings), and values are parsed as YAML scalars so
``3``, ``0.5``, ``true`` and ``[a, b]`` arrive typed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from bus.errors import ConfigError

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested overrides from variables named ``{prefix}__A__B``; keys are lower-cased."""
    marker = f"{prefix}__"
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(marker):
            continue
        path = [part.lower() for part in name[len(marker) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty level in the name")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {part} is set as a value too")
            node = child
        node[path[-1]] = value
    return tree


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


def load_config(
    model: type[ModelT],
    path: Path | None = None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelT:
    """File, then environment, then explicit overrides (CLI flags); validated as ``model``."""
    data = read_yaml(path) if path is not None else {}
    data = merge(data, env_overrides(env_prefix, os.environ if environ is None else environ))
    data = merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        source = str(path) if path is not None else "configuration"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
