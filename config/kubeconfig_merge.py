"""Kubeconfig files: reading one, and merging a new kubeconfig into an existing one (pure).

Below every program (``config``), so that the ``herdgate`` command merges what the
gateway made (``herdgate kubeconfig --merge``) without importing the gateway.

``merge`` works on the three named lists of a kubeconfig (``clusters``, ``users``,
``contexts``): an entry of the new file replaces the old entry of the same name where
that stood, entries of the new file the old one lacks are added after the old ones, and
every other old entry, and every other top-level key (``preferences``, ``extensions``),
stays as it was. ``current-context`` stays the old file's unless the caller asks for the
new one (or the old file has none). So merging is idempotent: merging the same file twice
gives what merging it once gave.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

NAMED_LISTS = ("clusters", "users", "contexts")
"""The lists whose entries are ``{"name": ..., <kind>: {...}}`` (kind: cluster, user,
context)."""
CURRENT = "current-context"


class KubeconfigError(ValueError):
    """A file that is not a kubeconfig kubectl could read."""


def load(text: str, source: str = "kubeconfig") -> dict[str, Any]:
    """A kubeconfig from YAML text; an empty text is an empty kubeconfig (``{}``).

    Raises ``KubeconfigError`` for text that is not YAML or not a kubeconfig's shape."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{source} is not YAML: {exc}") from None
    if doc is None:
        return {}
    check(doc, source)
    return dict(doc)


def dump(doc: Mapping[str, Any]) -> str:
    """YAML text of a kubeconfig, its keys in the order they were given."""
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)


def check(doc: Any, source: str = "kubeconfig") -> None:
    """Raise ``KubeconfigError`` unless ``doc`` has a kubeconfig's shape as far as merging
    reads it: a mapping; each of ``clusters``, ``users``, ``contexts`` absent, null or a
    list of mappings, each with a string ``name``; ``current-context`` a string."""
    if not isinstance(doc, Mapping):
        raise KubeconfigError(f"{source} is not a mapping of keys to values")
    for key in NAMED_LISTS:
        entries = doc.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise KubeconfigError(f"{source}: {key} is not a list")
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise KubeconfigError(f"{source}: {key}[{index}] has no name")
    current = doc.get(CURRENT)
    if current is not None and not isinstance(current, str):
        raise KubeconfigError(f"{source}: {CURRENT} is not a string")


def names(doc: Mapping[str, Any], key: str) -> list[str]:
    """The names in one of the named lists, in order."""
    return [str(entry["name"]) for entry in doc.get(key) or ()]


def merge(
    existing: Mapping[str, Any], new: Mapping[str, Any], use_new_context: bool = False
) -> dict[str, Any]:
    """``existing`` with ``new`` merged in (neither is changed; see the module's text).

    ``use_new_context``: make the new file's ``current-context`` the current one.
    Raises ``KubeconfigError`` when either is not a kubeconfig's shape (``check``).
    """
    check(existing, "the existing kubeconfig")
    check(new, "the new kubeconfig")
    merged: dict[str, Any] = copy.deepcopy(dict(existing))
    for key in ("apiVersion", "kind"):
        if key not in merged and key in new:
            merged[key] = new[key]
    for key in NAMED_LISTS:
        incoming = [copy.deepcopy(dict(entry)) for entry in new.get(key) or ()]
        if key not in new and key in merged:
            continue
        merged[key] = _merged_list(merged.get(key) or [], incoming)
    new_current = new.get(CURRENT) or ""
    if new_current and (use_new_context or not merged.get(CURRENT)):
        merged[CURRENT] = new_current
    elif CURRENT not in merged:
        merged[CURRENT] = ""
    return merged


def _merged_list(old: list[Any], incoming: list[dict[str, Any]]) -> list[Any]:
    """Old entries in their order, each replaced by the incoming one of its name (the
    last of that name, as kubectl reads a file: later entries win); old repeats of a
    replaced name dropped; the incoming names the old list lacked appended in order."""
    by_name: dict[str, dict[str, Any]] = {}
    for entry in incoming:
        by_name[entry["name"]] = entry
    out: list[Any] = []
    placed: set[str] = set()
    for entry in old:
        name = entry["name"]
        if name in by_name:
            if name not in placed:
                out.append(by_name[name])
                placed.add(name)
            continue
        out.append(entry)
    out.extend(entry for name, entry in by_name.items() if name not in placed)
    return out
