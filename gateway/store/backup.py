"""Backups of a store, restoring them, and moving a store to another backend
(``herdgate store backup|restore|migrate``, ``gateway.store.cli``).

A backup is every stored document read at one revision (``Store.snapshot``) with the
store's schema version: JSON, one document a line. It holds what the store holds, so
secrets only as hashes (scrypt password hashes, SHA3-512 token hashes); it is still
written 0600, since a hash is worth guarding. Live processes' heartbeats (``replicas``)
and leases are left out: they describe processes, not state, and a restored copy would
name processes that are not running.

``encode`` and ``decode`` are pure; ``decode`` accepts only a well-formed backup and says
in one line what is wrong with any other file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import StartError
from gateway.store import migrations
from gateway.store.base import Document, Store, StoreError
from gateway.store.records import CLUSTER_STATUS, LEASE, REPLICA, iso

FORMAT = "herdgate-store-backup"
EPHEMERAL = frozenset({REPLICA, LEASE})
"""Kinds that describe running processes, not state: neither saved nor restored."""
LIVE_S = 15.0
"""A replica record with a heartbeat this recent is a running gateway (as in
``gateway.clusters.replicas``): a store it uses is not restored over."""
WRITERS = 16
"""Writes in flight at once while restoring (etcd answers each over HTTP)."""


class BackupError(StoreError, StartError):
    """The backup or the store cannot be used as asked; the message says why (one line)."""


@dataclass(frozen=True, slots=True)
class Backup:
    schema: int
    revision: int
    """The source store's revision the documents were read at."""
    created: float
    documents: tuple[tuple[str, str, Document], ...]
    """``(kind, key, document)``, sorted by kind and key."""

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, _, _ in self.documents:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def encode(backup: Backup) -> bytes:
    head = {
        "format": FORMAT,
        "schema": backup.schema,
        "revision": backup.revision,
        "created": iso(backup.created),
        "count": len(backup.documents),
    }
    lines = [json.dumps(head, sort_keys=True)[:-1] + ', "documents": [']
    body = [
        json.dumps({"kind": kind, "key": key, "value": value}, sort_keys=True)
        for kind, key, value in backup.documents
    ]
    lines.append(",\n".join(body))
    lines.append("]}")
    return ("\n".join(lines) + "\n").encode()


def decode(data: bytes) -> Backup:
    """A backup from its file's bytes; ``BackupError`` naming what is wrong."""
    try:
        top = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BackupError(f"not a herdgate store backup (not JSON: {exc})") from None
    if not isinstance(top, dict) or top.get("format") != FORMAT:
        raise BackupError(f'not a herdgate store backup (no "format": "{FORMAT}")')
    schema, revision = _count(top.get("schema")), _count(top.get("revision"))
    if schema is None or schema < 1:
        raise BackupError("the backup's schema version is not a positive whole number")
    if revision is None:
        raise BackupError("the backup's revision is not a whole number")
    raw = top.get("documents")
    if not isinstance(raw, list):
        raise BackupError("the backup has no list of documents")
    documents: list[tuple[str, str, Document]] = []
    seen: set[tuple[str, str]] = set()
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BackupError(f"document {n}: not an object")
        kind, key, value = item.get("kind"), item.get("key"), item.get("value")
        if not isinstance(kind, str) or not _name(kind) or "/" in kind:
            raise BackupError(f"document {n}: its kind is not a name")
        if not isinstance(key, str) or not _name(key):
            raise BackupError(f"document {n}: its key is not a name")
        if not isinstance(value, dict):
            raise BackupError(f"document {n} ({kind} {key!r}): its value is not an object")
        if (kind, key) in seen:
            raise BackupError(f"document {n}: {kind} {key!r} appears twice")
        seen.add((kind, key))
        documents.append((kind, key, value))
    count = top.get("count")
    if count is not None and count != len(documents):
        raise BackupError(f"the backup says {count} documents but holds {len(documents)}")
    documents.sort(key=lambda d: (d[0], d[1]))
    return Backup(schema, revision, 0.0, tuple(documents))


def _count(value: Any) -> int | None:
    """``value`` if it is a whole number, not negative (JSON's true is not one)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _name(text: str) -> bool:
    return 0 < len(text) <= 1024 and text.isprintable()


def kept(documents: Iterable[tuple[str, str, Document]]) -> list[tuple[str, str, Document]]:
    """The documents a backup holds: all but the schema record and ``EPHEMERAL`` kinds,
    and cluster statuses without the lease generation they were written under: leases
    are not kept, and a generation means something only beside the leases of the store
    it was written in (a restored status carrying one would fence off the new store's
    first holders, whose generations start again lower)."""
    return [
        (kind, key, _unfenced(doc) if kind == CLUSTER_STATUS else doc)
        for kind, key, doc in documents
        if kind != migrations.META and kind not in EPHEMERAL
    ]


def _unfenced(doc: Document) -> Document:
    return {name: value for name, value in doc.items() if name != "generation"}


async def take(store: Store) -> Backup:
    """Every document of ``store`` at one revision."""
    snapshot = await store.snapshot()
    meta = {key: doc for kind, key, doc in snapshot.documents if kind == migrations.META}
    schema = migrations.version_of(meta.get(migrations.SCHEMA_KEY))
    if schema > migrations.SCHEMA_VERSION:
        raise migrations.too_new(schema, "the store")
    return Backup(schema, snapshot.revision, time.time(), tuple(kept(snapshot.documents)))


async def restore(store: Store, backup: Backup, *, force: bool = False) -> int:
    """Make ``store`` hold exactly the backup's documents, then migrate them to this
    herdgate's schema; the number written. Refuses a backup from a newer herdgate, a
    store a gateway is using, and (without ``force``) a store that holds records."""
    if backup.schema > migrations.SCHEMA_VERSION:
        raise migrations.too_new(backup.schema, "the backup")
    current = await store.snapshot()
    running = _running(current.documents)
    if running:
        raise BackupError(
            f"a gateway is running on this store (replica {running}): stop every gateway first"
        )
    held = [(kind, key) for kind, key, _ in current.documents if kind != migrations.META]
    records = [h for h in held if h[0] not in EPHEMERAL]
    if records and not force:
        raise BackupError(
            f"the store holds {len(records)} records already: restore into an empty store, "
            "or add --force to replace them"
        )
    wanted = {(kind, key) for kind, key, _ in backup.documents}
    await _bounded(store.delete(kind, key) for kind, key in held if (kind, key) not in wanted)
    await _bounded(store.put(kind, key, value) for kind, key, value in backup.documents)
    await migrations.set_version(store, backup.schema)
    await migrations.migrate(store, "the restored store")
    return len(backup.documents)


async def copy(source: Store, target: Store, *, force: bool = False) -> Backup:
    """Move every record of ``source`` into ``target`` (a restore of a backup taken
    now), and check that ``target`` then holds exactly them; the copy."""
    running = _running((await source.snapshot()).documents)
    if running:
        raise BackupError(
            f"a gateway is running on the source store (replica {running}): stop every "
            "gateway first, so that no write is left behind"
        )
    backup = await take(source)
    await restore(target, backup, force=force)
    after = await take(target)
    if after.schema != migrations.SCHEMA_VERSION or _differs(backup, after):
        raise BackupError("the target does not hold what was copied; it was changed meanwhile?")
    return backup


def _differs(expected: Backup, actual: Backup) -> bool:
    # A migration run on the target may add records (name claims): compare what was copied.
    held = {(kind, key): value for kind, key, value in actual.documents}
    return any(held.get((kind, key)) != value for kind, key, value in expected.documents)


def _running(documents: Iterable[tuple[str, str, Document]]) -> str:
    now = time.time()
    for kind, key, doc in documents:
        beat = doc.get("heartbeat")
        if kind == REPLICA and isinstance(beat, int | float) and now - beat < LIVE_S:
            return key
    return ""


async def _bounded(writes: Iterable[Awaitable[int]]) -> None:
    gate = asyncio.Semaphore(WRITERS)

    async def one(write: Awaitable[int]) -> None:
        async with gate:
            await write

    await asyncio.gather(*(one(w) for w in writes))


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all, readable by its owner only."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
