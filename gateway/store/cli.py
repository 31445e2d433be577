"""``herdgate store backup|restore|migrate``: act on a gateway's store directly, with
every gateway on it stopped (not over HTTPS; ``gateway.store.backup`` does the work).
The command line is defined in ``gateway.cli`` (``add_store_parser``), which imports
this module only when the command runs.

The store is the one the gateway's settings name (``--config``, ``--state-dir``,
``HERDGATE_STORE__*``), or one given as a URL: ``sqlite:///var/lib/herdgate/herdgate.db``,
``etcd://10.0.0.5:2379,10.0.0.6:2379/herdgate/`` (``store_from_url``, pure).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from urllib.parse import urlsplit

from config.cli import load_settings, run_program
from config.errors import ConfigError
from config.schema import GatewaySettings, StoreSettings
from gateway.store import backup as backups
from gateway.store import describe, migrations, open_store, sqlite_path
from gateway.store.base import Store, StoreError

DEFAULT_ETCD_PREFIX = "/herdgate/"


def store_from_url(text: str, option: str, base: StoreSettings | None = None) -> StoreSettings:
    """``sqlite://PATH`` (``sqlite:///abs/path``) or ``etcd://HOST:PORT[,...][/PREFIX]``
    as store settings (``base``'s other fields kept); ``ConfigError`` naming ``option``."""
    base = base or StoreSettings()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(
            option, f"{text!r} is not a store URL (sqlite:///PATH or etcd://HOST:PORT)"
        )
    if scheme == "sqlite":
        if not rest or "\x00" in rest:
            raise ConfigError(
                option, "sqlite:// needs a file: sqlite:///var/lib/herdgate/herdgate.db"
            )
        return dataclasses.replace(base, backend="sqlite", sqlite_path=rest)
    if scheme == "etcd":
        hosts, _, path = rest.partition("/")
        endpoints = []
        for host in hosts.split(","):
            try:
                parts = urlsplit(f"http://{host}")
                port = parts.port
            except ValueError:
                port = None
                parts = None
            if parts is None or not parts.hostname or port is None or parts.username:
                raise ConfigError(option, f"{host!r} is not HOST:PORT of an etcd member")
            endpoints.append(f"http://{host}")
        prefix = "/" + path.strip("/") + "/" if path.strip("/") else DEFAULT_ETCD_PREFIX
        if not prefix.isprintable():
            raise ConfigError(option, "the etcd key prefix must be printable")
        return dataclasses.replace(
            base, backend="etcd", etcd_endpoints=tuple(endpoints), etcd_prefix=prefix
        )
    raise ConfigError(option, f"unknown store {scheme!r}:// (known: sqlite://, etcd://)")


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    settings = load_settings(GatewaySettings, args, {"state_dir": args.state_dir})
    url = getattr(args, "store", None)
    if url:
        settings = dataclasses.replace(settings, store=store_from_url(url, "--store"))
    return settings


async def _open(settings: StoreSettings, state_dir: Path, *, must_exist: bool) -> Store:
    if settings.backend == "sqlite" and must_exist:
        path = sqlite_path(settings, state_dir)
        if not path.is_file():
            raise backups.BackupError(f"no store at {path}")
    # The schema is checked, not changed: a backup keeps the version it was taken at.
    return await open_store(settings, state_dir, migrate=False)


async def _backup(settings: GatewaySettings, file: Path) -> str:
    state = Path(settings.state_dir)
    store = await _open(settings.store, state, must_exist=True)
    try:
        taken = await backups.take(store)
    finally:
        await store.close()
    backups.write_file(file, backups.encode(taken))
    return (
        f"backed up {len(taken.documents)} records ({_counts(taken)}) of "
        f"{describe(settings.store, state)} at revision {taken.revision}, schema "
        f"{taken.schema}, to {file}"
    )


async def _restore(settings: GatewaySettings, file: Path, force: bool) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise backups.BackupError(f"cannot read {file}: {exc.strerror}") from None
    loaded = backups.decode(data)
    state = Path(settings.state_dir)
    store = await _open(settings.store, state, must_exist=False)
    try:
        written = await backups.restore(store, loaded, force=force)
    finally:
        await store.close()
    return (
        f"restored {written} records ({_counts(loaded)}) from {file} into "
        f"{describe(settings.store, state)}, schema {loaded.schema} -> "
        f"{migrations.SCHEMA_VERSION}"
    )


async def _migrate(
    settings: GatewaySettings, source_url: str, target_url: str | None, force: bool
) -> str:
    state = Path(settings.state_dir)
    source_settings = store_from_url(source_url, "--from")
    target_settings = (
        store_from_url(target_url, "--to", settings.store) if target_url else settings.store
    )
    if describe(source_settings, state) == describe(target_settings, state):
        raise ConfigError("--to", "is the --from store itself")
    source = await _open(source_settings, state, must_exist=True)
    try:
        target = await _open(target_settings, state, must_exist=False)
        try:
            copied = await backups.copy(source, target, force=force)
        finally:
            await target.close()
    finally:
        await source.close()
    return (
        f"copied {len(copied.documents)} records ({_counts(copied)}) from "
        f"{describe(source_settings, state)} to {describe(target_settings, state)}; "
        "point every gateway at the new store (store: in its settings) and start them"
    )


def _counts(backup: backups.Backup) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(backup.counts().items())) or "none"


def run(args: argparse.Namespace) -> int:
    def main(settings: GatewaySettings) -> int:
        if args.store_command == "backup":
            line = asyncio.run(_backup(settings, Path(args.file)))
        elif args.store_command == "restore":
            line = asyncio.run(_restore(settings, Path(args.file), args.force))
        else:
            line = asyncio.run(_migrate(settings, args.source, args.target, args.force))
        print(line, file=sys.stdout, flush=True)
        return 0

    failures = (StoreError, OSError)  # one line each, exit 1 (SchemaTooNew, BackupError too)
    return run_program(f"store {args.store_command}", args, settings_from, main, failures)
