"""Build settings from a YAML file, then ``HERDGATE_*`` variables, then flags.

Precedence, lowest first: defaults, the file, command-line flags, environment.
Environment variables name a field by its YAML path in upper case, with ``__``
between sections: ``HERDGATE_LISTEN``, ``HERDGATE_TOKENS__SESSION_TTL``.
Errors name the setting by its dotted path and say where the value came from: the file
and line, ``from HERDGATE_X`` or ``from the command line`` (config/errors.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from config.errors import ConfigError, Origin
from config.schema import DURATION, SIZE
from config.units import parse_duration, parse_size

T = TypeVar("T")
ENV_PREFIX = "HERDGATE_"


def yaml_key(field: dataclasses.Field[Any]) -> str:
    name = field.name
    if field.metadata.get("unit") == DURATION and name.endswith("_s"):
        return name[:-2]
    return name


class Sources:
    """Where each setting came from: dotted YAML path -> :class:`Origin`; later layers win.

    Errors found after loading (a missing certificate, ``workers: 0``) are located with
    :meth:`locate`; a setting set nowhere takes the origin of its closest parent.
    """

    def __init__(self) -> None:
        self.origins: dict[str, Origin] = {}

    def find(self, path: str) -> Origin | None:
        while path:
            origin = self.origins.get(path)
            if origin is not None:
                return origin
            path = path.rpartition(".")[0]
        return None

    def locate(self, exc: ConfigError) -> ConfigError:
        return exc.locate(self.find(exc.path))

    def add_leaves(self, data: Mapping[str, Any], origin: Origin, prefix: str = "") -> None:
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                self.add_leaves(value, origin, path)
            elif value is not None:
                self.origins[path] = origin


def read_yaml(path: str | Path, sources: Sources | None = None) -> dict[str, Any]:
    """The file as a mapping; ``sources`` (when given) learns the line of every key."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"cannot read {file}: not UTF-8 text") from exc
    parser = yaml.SafeLoader(text)
    try:
        node = parser.get_single_node()
        lines: dict[str, Origin] = {}
        if node is not None:
            _key_lines(node, "", file, lines, set())
        data = parser.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        problem = ", ".join(p for p in (exc.context, exc.problem) if p)
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError("", f"invalid YAML: {problem}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", file=file) from exc
    finally:
        parser.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", "the top level must be a mapping", file=file, line=1)
    if sources is not None:
        sources.origins.update(lines)
    return data


def _key_lines(
    node: yaml.Node, prefix: str, file: str, out: dict[str, Origin], seen: set[int]
) -> None:
    """Record the 1-based line of every mapping key below ``node``; refuse keys set twice."""
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return
    seen.add(id(node))  # an alias repeats a node: walk it once (and never loop)
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if path in out and key_node.value != "<<":
            first = out[path].line
            raise ConfigError(path, f"set twice (first on line {first})", file=file, line=line)
        out[path] = Origin(file, line)
        _key_lines(value_node, path, file, out, seen)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(
    cls: type[Any], environ: Mapping[str, str], skip: set[str], sources: Sources | None = None
) -> dict[str, Any]:
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
        if sources is not None:
            sources.origins[".".join(parts)] = Origin(source=name)
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
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = str(unknown[0])
        where = f"{path}.{key}" if path else key
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(fields))}"
        raise ConfigError(where, f"unknown setting; {hint}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        field = fields[key]
        where = f"{path}.{key}" if path else key
        kwargs[field.name] = _convert(hints[field.name], field, value, where)
    return cls(**kwargs)


def _got(value: Any) -> str:
    """A wrong value for a message: containers by kind only, long text shortened."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(kind: Any, field: dataclasses.Field[Any], value: Any, path: str) -> Any:
    unit = field.metadata.get("unit")
    if unit == DURATION:
        return parse_duration(value, path)
    if unit == SIZE:
        return parse_size(value, path)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_got(value)}")
        return build(kind, value, path)  # type: ignore[arg-type]  # kind is a dataclass type
    if kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"expected a string, got {_got(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(path, f"expected true or false, got {_got(value)}")
    if kind is int:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(path, f"expected an integer, got {_got(value)}") from None
    if kind is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected a number, got {_got(value)}") from None
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_got(value)}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ConfigError(path, f"expected a list of strings, got {_got(item)} in it")
        return tuple(str(v) for v in value)
    raise ConfigError(path, f"unsupported setting type {kind!r}")  # pragma: no cover


def load(
    cls: type[T],
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Defaults, then the file, then ``flags`` (already nested), then the environment."""
    return load_with_sources(cls, path, flags, environ)[0]


def load_with_sources(
    cls: type[T],
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[T, Sources]:
    """:func:`load`, plus where each setting came from (to locate later errors)."""
    sources = Sources()
    data: dict[str, Any] = read_yaml(path, sources) if path else {}
    if flags:
        given = {k: v for k, v in flags.items() if v is not None}
        sources.add_leaves(given, Origin(source="the command line"))
        data = _merge(data, given)
    env = os.environ if environ is None else environ
    data = _merge(data, env_overrides(cls, env, skip={"HERDGATE_CONFIG"}, sources=sources))
    try:
        return build(cls, data), sources
    except ConfigError as exc:
        sources.locate(exc)
        raise


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
