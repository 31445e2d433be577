"""State storage behind one interface (``Store``): embedded SQLite or etcd."""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError
from config.schema import StoreSettings
from gateway.store import migrations
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore


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
        from gateway.store.etcd import EtcdStore

        if not settings.etcd_endpoints:
            raise ConfigError("store.etcd_endpoints", "required with backend etcd")
        etcd = EtcdStore(settings.etcd_endpoints, settings.etcd_prefix)
        try:
            return await etcd.open()
        except BaseException:
            await etcd.close()  # its HTTP session, opened before etcd was found unreachable
            raise
    raise ConfigError(
        "store.backend", f"unknown backend {settings.backend!r} (known: sqlite, etcd)"
    )
