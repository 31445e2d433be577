"""The stored documents' schema version and its migrations, the same for every backend.

The version is one document, ``meta/schema`` (``{"id": "schema", "version": N}``), in the
store itself: a SQLite file and an etcd prefix carry their own. ``migrate`` runs at every
start (``gateway.store.open_store``) and in ``herdgate store``: it applies, in order, the
migrations between the stored version and ``SCHEMA_VERSION``, recording each step, and
refuses a store from a newer herdgate (``SchemaTooNew``, one line, exit 1) rather than
misread it. A store without the document was written before versions were recorded:
version 1.

Migrations go through the ``Store`` interface only and are idempotent: two processes
starting at once may both run one (the version is then advanced with ``swap`` by
whichever is first, and the other sees it). Append to ``MIGRATIONS``; never change one
that shipped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.store.base import AlreadyExists, Document, SchemaTooNew, Store
from gateway.store.records import USER, USERNAME, fold_username

logger = logging.getLogger(__name__)

META = "meta"
"""The kind of the store's own bookkeeping (not a record of the directory's)."""
SCHEMA_KEY = "schema"

Migration = Callable[[Store], Awaitable[None]]


async def _claim_local_names(store: Store) -> None:
    """Version 2: a name claim (``usernames``, keyed by the folded name) for every local
    user stored before claims existed, so that a replica creating a user by another
    spelling of the name is refused by the store itself, not only by its memory. Where
    an older version let two names fold together, the first (by id) keeps the claim."""
    for doc in sorted(await store.list(USER), key=lambda d: str(d.get("id", ""))):
        if doc.get("provider", "local") != "local" or not isinstance(doc.get("username"), str):
            continue
        folded = fold_username(doc["username"])
        claim = {"id": folded, "userId": str(doc["id"]), "created": time.time()}
        with contextlib.suppress(AlreadyExists):
            await store.create(USERNAME, folded, claim)


MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("name claims for local users stored before claims existed", _claim_local_names),
)
"""``MIGRATIONS[n]`` takes a store from version ``n + 1`` to ``n + 2``."""
SCHEMA_VERSION = 1 + len(MIGRATIONS)
"""The version this herdgate writes."""


def schema_doc(version: int) -> Document:
    return {"id": SCHEMA_KEY, "version": version}


def version_of(doc: Document | None) -> int:
    """The version a ``meta/schema`` document records (1: no document)."""
    if doc is None:
        return 1
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaTooNew(f"the store's schema record is not understood: {doc!r}")
    return version


def too_new(version: int, where: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"{where} has schema version {version}, newer than this herdgate's "
        f"({SCHEMA_VERSION}): run the herdgate that wrote it, or restore a backup"
    )


async def stored_version(store: Store) -> int:
    return version_of(await store.get(META, SCHEMA_KEY))


async def migrate(store: Store, where: str = "the store") -> int:
    """Bring ``store`` to ``SCHEMA_VERSION``; the version it had. Raises ``SchemaTooNew``."""
    doc = await store.get(META, SCHEMA_KEY)
    first = version_of(doc)
    # Each pass advances one version or learns another process did; bounded.
    for _ in range(2 * len(MIGRATIONS) + 2):
        version = version_of(doc)
        if version > SCHEMA_VERSION:
            raise too_new(version, where)
        if version == SCHEMA_VERSION:
            # Without a record (only if this herdgate's version were 1): write it.
            if doc is None and await store.swap(META, SCHEMA_KEY, None, schema_doc(1)) is None:
                doc = await store.get(META, SCHEMA_KEY)
                continue
            return first
        name, step = MIGRATIONS[version - 1]
        logger.info("store schema %d -> %d: %s", version, version + 1, name)
        await step(store)
        new = schema_doc(version + 1)
        if await store.swap(META, SCHEMA_KEY, doc, new) is None:
            doc = await store.get(META, SCHEMA_KEY)  # another process moved it on
        else:
            doc = new
    raise SchemaTooNew(f"{where}: its schema version kept changing while migrating")


async def set_version(store: Store, version: int) -> None:
    """Record ``version`` (a restore writes the backup's, then migrates from it)."""
    await store.put(META, SCHEMA_KEY, schema_doc(version))
