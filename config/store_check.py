"""Start-up checks of the store settings (``store`` in the gateway's YAML): pure, no I/O.

The files they name (the etcd CA, client certificate and key, the password file) are
checked with every other file setting by ``config.checks.check_files``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from config.errors import ConfigError

BACKENDS = ("sqlite", "etcd")


def check_endpoint(endpoint: str) -> str:
    """The scheme of an etcd client URL (``http`` or ``https``); ValueError saying what
    is wrong with it otherwise."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{endpoint!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{endpoint!r}: the scheme must be http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{endpoint!r} names no host")
    if port is None:
        raise ValueError(f"{endpoint!r} names no port (etcd's client port is usually 2379)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{endpoint!r}: only scheme://host:port is allowed")
    return parts.scheme


def check_store(settings: Any) -> None:
    """Raise ConfigError naming the first store setting that cannot work."""
    if settings.backend not in BACKENDS:
        raise ConfigError(
            "store.backend", f"unknown backend {settings.backend!r} (known: {', '.join(BACKENDS)})"
        )
    for name in ("etcd_request_timeout_s", "etcd_dial_timeout_s", "max_feed_lag_s"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"store.{name.removesuffix('_s')}", "must be positive")
    if settings.backend != "etcd":
        return
    if not settings.etcd_endpoints:
        raise ConfigError("store.etcd_endpoints", "required with backend etcd")
    schemes = set()
    for endpoint in settings.etcd_endpoints:
        try:
            schemes.add(check_endpoint(str(endpoint)))
        except ValueError as exc:
            raise ConfigError("store.etcd_endpoints", str(exc)) from None
    if len(schemes) > 1:
        raise ConfigError("store.etcd_endpoints", "mixes http:// and https:// endpoints")
    tls = settings.etcd_tls
    if "http" in schemes and (tls.ca_file or tls.cert_file or tls.key_file):
        raise ConfigError(
            "store.etcd_tls", "is set but the endpoints are http://; use https:// endpoints"
        )
    prefix = settings.etcd_prefix
    if not prefix.startswith("/") or prefix.strip("/") == "":
        raise ConfigError("store.etcd_prefix", "must start with / and name something: /herdgate/")
    if any(c.isspace() or not c.isprintable() for c in prefix):
        raise ConfigError("store.etcd_prefix", "must not hold spaces or control characters")
    password = bool(settings.etcd_password) or bool(settings.etcd_password_file)
    if settings.etcd_password and settings.etcd_password_file:
        raise ConfigError(
            "store.etcd_password_file", "set etcd_password or etcd_password_file, not both"
        )
    if settings.etcd_username and not password:
        raise ConfigError(
            "store.etcd_password", "required with etcd_username (or etcd_password_file)"
        )
    if password and not settings.etcd_username:
        raise ConfigError("store.etcd_username", "required with an etcd password")
