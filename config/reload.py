"""What every program's SIGHUP shares: re-reading the settings and comparing them.

:func:`changed_paths` and :func:`needs_restart` are pure: which settings differ between
two loads (dotted paths as written in the YAML file, ``tls.cert_file``,
``shutdown_grace``), and which of those a program cannot apply while it runs.
:func:`settings_loader` re-reads the settings the way the program read them at start
(same flags, same file, same environment) and checks the files they name; the other
helpers are the steps every program's reload takes (log level, certificate, warning).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from config import checks, loader
from config.errors import ConfigError
from config.logging import set_level
from config.schema import LoggingSettings
from config.tls import server_context

logger = logging.getLogger(__name__)

S = TypeVar("S")


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the settings that differ (pure)."""
    out: list[str] = []
    for field in dataclasses.fields(old):
        a, b = getattr(old, field.name), getattr(new, field.name)
        path = f"{prefix}{loader.yaml_key(field)}"
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += changed_paths(a, b, path + ".")
        elif a != b:
            out.append(path)
    return out


def needs_restart(paths: Iterable[str], reloadable: Iterable[str]) -> list[str]:
    """The ``paths`` that are neither a ``reloadable`` path nor inside one (pure)."""
    roots = tuple(reloadable)
    return [p for p in paths if not any(p == r or p.startswith(r + ".") for r in roots)]


def settings_loader(
    args: argparse.Namespace, settings_from: Callable[[argparse.Namespace], S]
) -> Callable[[], S]:
    """A callable that loads the settings again and checks the files they name.

    It raises ConfigError, located in the file (or variable) the setting came from.
    """

    def load() -> S:
        try:
            settings = settings_from(args)
            checks.check_files(settings)
        except ConfigError as exc:
            sources = getattr(args, "config_sources", None)
            if isinstance(sources, loader.Sources):
                sources.locate(exc)
            raise
        return settings

    return load


def load_again(load: Callable[[], S]) -> S | None:
    """The settings loaded again, or None (logged) when they no longer load."""
    try:
        return load()
    except ConfigError as exc:
        logger.error("reload: configuration error, keeping the running settings: %s", exc)
        return None


def apply_log_level(old: LoggingSettings, new: LoggingSettings) -> LoggingSettings:
    """Switch to ``new.level`` if it is valid; the logging settings now in effect."""
    try:
        set_level(new)
    except ConfigError as exc:
        logger.error("reload: keeping the log level: %s", exc)
        return old
    return dataclasses.replace(old, level=new.level)


def warn_restart(paths: list[str]) -> None:
    if paths:
        logger.warning(
            "reload: a restart is needed to apply %s (the rest was applied)", ", ".join(paths)
        )


def reload_certificate(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> bool:
    """Load a new certificate and key into a live context (new handshakes use them).

    They are tried in a scratch context first, so a key that does not match its
    certificate leaves the live context as it was. False (logged) on failure.
    """
    try:
        server_context(cert_file, key_file)
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        logger.error("reload: keeping the current TLS certificate: %s", exc)
        return False
    logger.info("reload: TLS certificate loaded from %s", cert_file)
    return True
