"""State storage behind one interface (``Store``): embedded SQLite or etcd."""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError
from config.schema import StoreSettings
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore


async def open_store(settings: StoreSettings, state_dir: Path) -> Store:
    if settings.backend == "sqlite":
        path = Path(settings.sqlite_path) if settings.sqlite_path else state_dir / "herdgate.db"
        return await SQLiteStore(path).open()
    if settings.backend == "etcd":
        from gateway.store.etcd import EtcdStore

        if not settings.etcd_endpoints:
            raise ConfigError("store.etcd_endpoints", "required with backend etcd")
        return await EtcdStore(settings.etcd_endpoints, settings.etcd_prefix).open()
    raise ConfigError(
        "store.backend", f"unknown backend {settings.backend!r} (known: sqlite, etcd)"
    )
