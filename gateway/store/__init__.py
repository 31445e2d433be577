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
    raise ConfigError("store.backend", f"unknown backend {settings.backend!r} (known: sqlite)")
