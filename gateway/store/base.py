"""The storage interface: JSON documents by kind and key.

Every backend (embedded SQLite, etcd) implements ``Store``. The gateway keeps its
working set in memory (``gateway.identity.directory``) and writes through to the store; the
store's change feed keeps replicas' memory in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from config.errors import StartError

Document = dict[str, Any]


class StoreError(Exception):
    """The backend failed (I/O, connection)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (every endpoint tried) or did not answer in time.

    Writes fail with it while reads on the request path go on from memory; the
    management API answers it with 503 "the store is unavailable"."""


class SchemaTooNew(StoreError, StartError):
    """The store was written by a newer herdgate (its schema version is above the one
    this program knows): refused at start rather than misread. One line, exit 1."""


class AlreadyExists(StoreError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key


class Compacted(StoreError):
    """The change feed was asked for writes the backend no longer keeps (SQLite's change
    log window, etcd's compaction): the follower has fallen behind and must reload
    everything (``gateway.identity.directory.Directory.reload``), then follow again."""

    def __init__(self, after: int, compacted: int, snapshot: Snapshot | None = None) -> None:
        super().__init__(
            f"the writes after revision {after} are gone (kept from {compacted + 1} on)"
        )
        self.after = after
        self.compacted = compacted
        self.snapshot = snapshot
        """Every document now, when the backend could read them at once (SQLite, from
        ``recent_changes``): the caller rebuilds from it without waiting."""


class NotFound(StoreError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every stored document at one revision (``Store.snapshot``), for backups."""

    revision: int
    documents: list[tuple[str, str, Document]]
    """``(kind, key, document)``, sorted by kind and key."""


@dataclass(frozen=True, slots=True)
class Change:
    """One write seen on the change feed; ``value`` is None for a deletion.

    A change with an empty ``kind`` is no write but a progress mark: the feed has
    delivered every write up to ``revision``."""

    revision: int
    kind: str
    key: str
    value: Document | None


@runtime_checkable
class ExpiringLeases(Protocol):
    """A store with leases of its own (etcd's): a key written under a lease vanishes when
    the lease is not kept alive or is revoked. ``gateway.controllers.lease`` holds its
    leadership leases with these where the store has them."""

    async def grant_lease(self, ttl_s: int) -> tuple[int, int]:
        """A new lease of at least ``ttl_s`` seconds: its id and the TTL granted."""
        ...

    async def keep_lease(self, lease_id: int) -> int:
        """Renew: the seconds it now has left, 0 when it is gone (expired or revoked)."""
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """End it now (its keys are deleted); nothing if it is already gone."""
        ...

    async def get_versioned(self, kind: str, key: str) -> tuple[Document, int] | None:
        """A document and the revision that last wrote it, or None."""
        ...

    async def put_leased(
        self, kind: str, key: str, value: Document, lease_id: int, expected: int
    ) -> int | None:
        """Write ``value`` under the lease only if the document is still the one written
        at revision ``expected`` (0: absent); the revision of the write, or None."""
        ...


@runtime_checkable
class SwapsMany(Protocol):
    """A store that makes many compare-and-sets of one kind at once (SQLite: in one
    transaction, where one after the other each took a transaction and a trip to the
    store's thread)."""

    async def swap_many(
        self, kind: str, items: Sequence[tuple[str, Document | None, Document | None]]
    ) -> list[int | None]:
        """``swap(kind, key, expected, value)`` for each ``(key, expected, value)``, each
        holding or failing on its own: the revision of each write, or None."""
        ...


@runtime_checkable
class UrgentWrites(Protocol):
    """A store whose requests otherwise queue behind one another (SQLite: one thread)
    with a way around that queue, for the few requests that must not wait behind
    thousands of others: a lease session's renewal (every lease of the process lapses
    with it, ``gateway.controllers.lease``)."""

    async def get_now(self, kind: str, key: str) -> Document | None:
        """``get``, ahead of anything queued."""
        ...

    async def swap_now(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        """``swap``, ahead of anything queued."""
        ...


async def swap_all(
    store: Store, kind: str, items: Sequence[tuple[str, Document | None, Document | None]]
) -> list[int | None]:
    """``Store.swap`` for each ``(key, expected, value)``: in one batch where the store
    has ``SwapsMany``, else all at once (etcd answers each over HTTP)."""
    if not items:
        return []
    if isinstance(store, SwapsMany):
        return await store.swap_many(kind, items)
    return list(await asyncio.gather(*(store.swap(kind, key, old, new) for key, old, new in items)))


class Store(Protocol):
    async def get(self, kind: str, key: str) -> Document | None: ...

    async def list(self, kind: str) -> list[Document]: ...

    async def create(self, kind: str, key: str, value: Document) -> int:
        """Insert; raises ``AlreadyExists``. Returns the new revision."""
        ...

    async def put(self, kind: str, key: str, value: Document) -> int:
        """Insert or replace. Returns the new revision."""
        ...

    async def patch(self, kind: str, key: str, changes: Document) -> tuple[int, Document] | None:
        """Set some fields of an existing document atomically: its revision and new value,
        or None if it does not exist.

        Partial updates go through here so that they never resurrect a document that
        another process deleted in the meantime (a revoked token, a deleted cluster).
        """
        ...

    async def delete(self, kind: str, key: str) -> int:
        """Remove; the revision of the deletion, 0 if it was not there."""
        ...

    async def swap(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        """Compare and set: replace the document with ``value`` (None: delete it) only if
        it is ``expected`` now (None: absent), atomically across processes and replicas.
        The revision of the write (0 for deleting what is absent), or None when the
        document is not ``expected`` (nothing written). Leases are taken and renewed with
        this (``gateway.controllers.lease``)."""
        ...

    async def revision(self) -> int: ...

    async def snapshot(self) -> Snapshot:
        """Every document of every kind, read at one revision (a consistent view even
        while others write): what ``herdgate store backup`` saves."""
        ...

    def recent_changes(self, after: int) -> Sequence[Change] | None:
        """Writes above ``after`` that another process made, read without waiting.

        Called on the request path before a token is trusted, so it must be cheap:
        None when nothing changed since the last call (or the backend cannot tell).
        Raises ``Compacted`` when writes above ``after`` are no longer kept.
        """
        ...

    def changes(self, after: int) -> AsyncIterator[Change]:
        """Writes with a revision above ``after``, including other processes' writes (and
        progress marks, see ``Change``). Raises ``Compacted`` when some of them are no
        longer kept, or the store went back before ``after`` (the caller reloads)."""
        ...

    async def close(self) -> None: ...
