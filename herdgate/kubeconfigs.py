"""Kubeconfig files on the user's machine: where one goes and how a new one is merged
into an existing file (``herdgate kubeconfig --merge``).

The merge itself is ``config.kubeconfig_merge.merge``, the one the gateway's own
documents are checked against; the new file's ``current-context`` becomes the current
one, as ``kubectl config use-context`` would after a download.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from config import kubeconfig_merge
from herdgate.contexts import write_private

SECTIONS = ("clusters", "users", "contexts")


class KubeconfigError(Exception):
    pass


def default_target(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """Where kubectl reads (and writes new entries to): the first file of ``$KUBECONFIG``,
    else ``~/.kube/config``."""
    env = os.environ if environ is None else environ
    for entry in env.get("KUBECONFIG", "").split(os.pathsep):
        if entry:
            return Path(entry).expanduser()
    return (home or Path.home()) / ".kube" / "config"


def parse(text: str, where: str) -> dict[str, Any]:
    """A kubeconfig document (an empty text is an empty config); a clear error otherwise."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{where} is not YAML: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{where} is not a kubeconfig (not a YAML mapping)")
    for section in SECTIONS:
        entries = doc.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries
        ):
            raise KubeconfigError(f"{where}: {section} must be a list of named entries")
    return doc


def merge_kubeconfigs(existing: Mapping[str, Any], incoming: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` with ``incoming``'s clusters, users and contexts added; an entry of
    the same name is replaced where it stood, the others keep their order. Everything
    else of ``existing`` (preferences, extensions) is kept; ``current-context`` becomes
    ``incoming``'s when it has one. Neither argument is changed."""
    try:
        return kubeconfig_merge.merge(existing, incoming, use_new_context=True)
    except kubeconfig_merge.KubeconfigError as exc:
        raise KubeconfigError(str(exc)) from None


def context_names(doc: Mapping[str, Any]) -> list[str]:
    return [str(c.get("name")) for c in doc.get("contexts") or [] if isinstance(c, dict)]


def merge_into_file(path: Path, incoming_text: str) -> dict[str, Any]:
    """Merge a kubeconfig into ``path`` (created if missing), written 0600 atomically;
    returns the merged document."""
    incoming = parse(incoming_text, "the gateway's kubeconfig")
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeconfigError(f"cannot read {path}: {exc}") from None
    existing = parse(text, str(path))
    merged = merge_kubeconfigs(existing, incoming)
    write_private(path, yaml.safe_dump(merged, sort_keys=False).encode())
    return merged
