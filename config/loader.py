"""Build settings from a YAML file, then ``HERDGATE_*`` variables, then flags.

Precedence, lowest first: defaults, the file, command-line flags, environment.
Environment variables name a field by its YAML path in upper case, with ``__``
between sections: ``HERDGATE_LISTEN``, ``HERDGATE_TOKENS__SESSION_TTL``.
Unknown keys are errors that name their dotted path.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from config.errors import ConfigError
from config.schema import DURATION, SIZE
from config.units import parse_duration, parse_size

T = TypeVar("T")
ENV_PREFIX = "HERDGATE_"


def yaml_key(field: dataclasses.Field[Any]) -> str:
    name = field.name
    if field.metadata.get("unit") == DURATION and name.endswith("_s"):
        return name[:-2]
    return name


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping")
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(cls: type[Any], environ: Mapping[str, str], skip: set[str]) -> dict[str, Any]:
    """Nested mapping of values from ``HERDGATE_*`` variables that name fields of ``cls``."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in skip:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not _is_field_path(cls, parts):
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _is_field_path(cls: type[Any], parts: list[str]) -> bool:
    hints = typing.get_type_hints(cls)
    for index, part in enumerate(parts):
        fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
        field = fields.get(part)
        if field is None:
            return False
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            cls = kind  # type: ignore[assignment]  # descending into a nested section
            hints = typing.get_type_hints(cls)
        elif index != len(parts) - 1:
            return False
    return True


def build(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Instantiate the dataclass ``cls`` from a mapping, validating keys and values."""
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(where, f"unknown setting (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        field = fields[key]
        where = f"{path}.{key}" if path else key
        kwargs[field.name] = _convert(hints[field.name], field, value, where)
    return cls(**kwargs)


def _convert(kind: Any, field: dataclasses.Field[Any], value: Any, path: str) -> Any:
    unit = field.metadata.get("unit")
    if unit == DURATION:
        return parse_duration(value, path)
    if unit == SIZE:
        return parse_size(value, path)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(path, "expected a mapping")
        return build(kind, value, path)  # type: ignore[arg-type]  # kind is a dataclass type
    if kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, "expected a string")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(path, "expected true or false")
    if kind is int:
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(path, "expected an integer") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, "expected a number") from None
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(path, "expected a list")
        return tuple(str(v) for v in value)
    raise ConfigError(path, f"unsupported setting type {kind!r}")  # pragma: no cover


def load(
    cls: type[T],
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Defaults, then the file, then ``flags`` (already nested), then the environment."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    if flags:
        data = _merge(data, {k: v for k, v in flags.items() if v is not None})
    env = os.environ if environ is None else environ
    data = _merge(data, env_overrides(cls, env, skip={"HERDGATE_CONFIG"}))
    return build(cls, data)


def _is_secret(name: str) -> bool:
    """Fields whose values must never be printed (files holding them are fine to show)."""
    return not name.endswith("_file") and any(
        word in name for word in ("token", "password", "secret")
    )


def redacted(settings: Any) -> dict[str, Any]:
    """Settings as a plain mapping with secret-looking values hidden (``--check-config``)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            out[yaml_key(field)] = redacted(value)
        elif _is_secret(field.name) and value:
            out[yaml_key(field)] = "<redacted>"
        else:
            out[yaml_key(field)] = list(value) if isinstance(value, tuple) else value
    return out
