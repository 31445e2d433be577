"""State storage behind one interface (``Store``): embedded SQLite or etcd."""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError
from config.schema import StoreSettings
from gateway.store import migrations
from gateway.store.base import Store, StoreError
from gateway.store.sqlite import SQLiteStore


def _password(settings: StoreSettings) -> str:
    if settings.etcd_password_file:
        try:
            return Path(settings.etcd_password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StoreError(
                f"cannot read store.etcd_password_file {settings.etcd_password_file}: "
                f"{exc.strerror or exc}"
            ) from None
    return settings.etcd_password


async def open_store(settings: StoreSettings, state_dir: Path, *, migrate: bool = True) -> Store:
    """The configured store, open, its documents migrated to this herdgate's schema
    (``gateway.store.migrations``; a store from a newer herdgate: ``SchemaTooNew``)."""
    store = await _open(settings, state_dir)
    if migrate:
        try:
            await migrations.migrate(store, describe(settings, state_dir))
        except BaseException:
            await store.close()
            raise
    return store


def describe(settings: StoreSettings, state_dir: Path) -> str:
    """The store in a message: its file, or its etcd endpoints and prefix."""
    if settings.backend == "etcd":
        return f"etcd {','.join(settings.etcd_endpoints)} prefix {settings.etcd_prefix}"
    return str(sqlite_path(settings, state_dir))


def sqlite_path(settings: StoreSettings, state_dir: Path) -> Path:
    return Path(settings.sqlite_path) if settings.sqlite_path else state_dir / "herdgate.db"


async def _open(settings: StoreSettings, state_dir: Path) -> Store:
    if settings.backend == "sqlite":
        if settings.sqlite_keep_changes < 1:
            raise ConfigError("store.sqlite_keep_changes", "must be at least 1")
        path = sqlite_path(settings, state_dir)
        return await SQLiteStore(path, keep_changes=settings.sqlite_keep_changes).open()
    if settings.backend == "etcd":
        from gateway.store.etcd import EtcdOptions, EtcdStore

        if not settings.etcd_endpoints:
            raise ConfigError("store.etcd_endpoints", "required with backend etcd")
        options = EtcdOptions(
            endpoints=tuple(settings.etcd_endpoints),
            prefix=settings.etcd_prefix,
            ca_file=settings.etcd_tls.ca_file,
            cert_file=settings.etcd_tls.cert_file,
            key_file=settings.etcd_tls.key_file,
            username=settings.etcd_username,
            password=lambda: _password(settings),
            request_timeout_s=settings.etcd_request_timeout_s,
            dial_timeout_s=settings.etcd_dial_timeout_s,
        )
        return await EtcdStore(options).open()  # closed again if it fails
    raise ConfigError(
        "store.backend", f"unknown backend {settings.backend!r} (known: sqlite, etcd)"
    )
