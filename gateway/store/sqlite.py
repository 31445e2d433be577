"""Embedded store: one SQLite file (WAL mode), accessed from one worker thread.

Each write appends to a ``changes`` log in the same transaction, so other processes
sharing the file (several gateway workers on one host) can follow the change feed. The
log keeps the last ``keep_changes`` writes; the highest revision removed is kept too
(``meta``: ``compacted``), so a follower that fell further behind is told (``Compacted``)
and reloads instead of silently missing rows.

The tables' layout has a version of its own (``PRAGMA user_version``, ``LAYOUTS``),
migrated when the file is opened; the documents' schema version is
``gateway.store.migrations``' business, the same for every backend.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import functools
import json
import mmap
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.base import (
    AlreadyExists,
    Change,
    Compacted,
    Document,
    SchemaTooNew,
    Snapshot,
    StoreError,
)

T = TypeVar("T")

POLL_INTERVAL_S = 0.2
POLL_IDLE_MAX_S = 2.0
"""The change feed polls every POLL_INTERVAL_S after a change and backs off to this while
nothing changes: each wake-up of an idle process costs more than the poll itself."""
SWAP_BATCH = 500
"""Compare-and-sets per transaction in ``swap_many``."""
TRIP_MAX_OPS = 256
"""Operations taken to the store's thread in one trip (``SQLiteStore._run``)."""
KEEP_CHANGES = 10_000
"""Change-log rows kept for followers; older ones are compacted away (every
``keep_changes // 10`` writes, at most every 1,000)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT
);
"""


def _layout_meta(db: sqlite3.Connection) -> None:
    """Layout 1: the ``meta`` table and the compaction mark. A file from before it may
    have compacted its log already: the mark is then just below the oldest row kept
    (revisions are consecutive: AUTOINCREMENT, and a rolled-back insert gives its number
    back)."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    oldest = db.execute("SELECT MIN(revision) FROM changes").fetchone()[0]
    if oldest is None:  # an empty log: nothing newer than the last number was removed
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        compacted = int(row[0]) if row else 0
    else:
        compacted = int(oldest) - 1
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('compacted', ?)", (compacted,))


LAYOUTS: tuple[Callable[[sqlite3.Connection], None], ...] = (_layout_meta,)
"""The table layout's migrations, in order: ``LAYOUTS[n]`` takes a file from layout ``n``
to ``n + 1`` (``PRAGMA user_version``). Append only; never change one that shipped."""
LAYOUT_VERSION = len(LAYOUTS)


class SQLiteStore:
    def __init__(self, path: str | Path, keep_changes: int = KEEP_CHANGES) -> None:
        if keep_changes < 1:
            raise ValueError("keep_changes must be at least 1")
        self.path = Path(path)
        self.keep_changes = keep_changes
        self._compact_every = max(1, min(1000, keep_changes // 10))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._queue: collections.deque[_Op] = collections.deque()
        """Operations waiting for the next trip to the store's thread."""
        self._trip = False
        """Whether a trip is planned or under way (then ``_run`` only queues)."""
        self._db: sqlite3.Connection | None = None
        self._urgent = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-urgent")
        """``get_now``/``swap_now``: a thread and connection of their own, so that a lease
        session's renewal never waits behind the queue of the store's thread."""
        self._urgent_db: sqlite3.Connection | None = None
        self._probe: sqlite3.Connection | None = None
        self._signal: mmap.mmap | None = None
        self._signal_seen = b""

    async def open(self) -> SQLiteStore:
        await self._run(self._open)
        return self

    def _open(self) -> None:
        _private_dirs(self.path.parent)
        # SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so the file
        # is created 0600 before SQLite sees it; files an older version left readable
        # are narrowed before anything is read from or written to them.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                _narrow(self.path.with_name(self.path.name + suffix))
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
            _migrate_layout(db, self.path)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._open_signal()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    # -- the change signal --------------------------------------------------------------
    # Eight bytes in a small shared file, rewritten (random) after every commit. Every
    # process maps it, so "has anyone written since I last looked?" is a memory read on
    # the request path; only then is the database asked what changed.

    def _open_signal(self) -> None:
        path = self.path.with_name(self.path.name + ".changed")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._signal = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def _signal_change(self) -> None:
        if self._signal is not None:
            self._signal[0:8] = os.urandom(8)

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store's thread, after everything queued before it.

        Operations go to the thread in trips: those queued during one event-loop turn,
        and those queued while a trip is under way, go together in the next one, and
        their results come back together. One hand-over to the thread and one back per
        trip instead of per operation (each costs the event loop a concurrent future, a
        lock and a wake-up; a restarted gateway's thousands of lease, status and
        connection writes made those a tenth of its work). Each operation keeps its own
        transaction and outcome; one that was cancelled before its trip is not run.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Op(fn, future))
        if not self._trip:
            self._trip = True
            loop.call_soon(self._start_trip, loop)
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _start_trip(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._queue
        ops: list[_Op] = []
        while queue and len(ops) < TRIP_MAX_OPS:
            op = queue.popleft()
            if not op.future.done():  # (cancelled meanwhile: not run)
                ops.append(op)
        if not ops:
            self._trip = False
            return
        try:
            self._executor.submit(self._travel, loop, ops)
        except RuntimeError as exc:  # the store was closed
            self._trip = False
            for op in ops:
                op.future.set_exception(StoreError(f"sqlite: {exc}"))

    def _travel(self, loop: asyncio.AbstractEventLoop, ops: list[_Op]) -> None:
        """On the store's thread: run ``ops`` in order, then hand their outcomes back."""
        outcomes: list[tuple[bool, object]] = []
        try:
            for op in ops:
                try:
                    outcomes.append((True, op.fn()))
                except Exception as exc:  # noqa: BLE001 - the caller's to handle
                    outcomes.append((False, exc))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._arrived, loop, ops, outcomes)

    def _arrived(
        self, loop: asyncio.AbstractEventLoop, ops: list[_Op], outcomes: list[tuple[bool, object]]
    ) -> None:
        for index, op in enumerate(ops):
            if op.future.done():
                continue  # cancelled while on its trip (it ran: as with an executor)
            if index >= len(outcomes):
                op.future.set_exception(StoreError("sqlite: the store's thread failed"))
            elif outcomes[index][0]:
                op.future.set_result(outcomes[index][1])
            else:
                failure = outcomes[index][1]
                assert isinstance(failure, BaseException)
                op.future.set_exception(failure)
        self._trip = False
        if self._queue:
            self._trip = True
            self._start_trip(loop)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def get(self, kind: str, key: str) -> Document | None:
        def op() -> Document | None:
            row = self._conn.execute(
                "SELECT value FROM objects WHERE kind=? AND key=?", (kind, key)
            ).fetchone()
            return None if row is None else _load(row[0])

        return await self._run(op)

    async def list(self, kind: str) -> list[Document]:
        def op() -> list[Document]:
            rows = self._conn.execute(
                "SELECT value FROM objects WHERE kind=? ORDER BY key", (kind,)
            ).fetchall()
            return [_load(row[0]) for row in rows]

        return await self._run(op)

    def _write(self, kind: str, key: str, value: Document | None, must_be_new: bool) -> int:
        db = self._conn
        text = None if value is None else json.dumps(value, separators=(",", ":"))
        db.execute("BEGIN IMMEDIATE")
        try:
            exists = (
                db.execute("SELECT 1 FROM objects WHERE kind=? AND key=?", (kind, key)).fetchone()
                is not None
            )
            if must_be_new and exists:
                db.execute("ROLLBACK")
                raise AlreadyExists(kind, key)
            if value is None and not exists:
                db.execute("ROLLBACK")
                return 0
            revision = self._put_row(db, kind, key, text)
            db.execute("COMMIT")
            self._signal_change()
        except AlreadyExists:
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return revision

    def _put_row(self, db: sqlite3.Connection, kind: str, key: str, text: str | None) -> int:
        """Write one document (``text`` None: delete it) and log the write, inside the
        caller's transaction; its revision."""
        revision = self._append(db, kind, key, text)
        if text is None:
            db.execute("DELETE FROM objects WHERE kind=? AND key=?", (kind, key))
        else:
            db.execute(
                "INSERT INTO objects (kind, key, value, revision) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value=excluded.value, "
                "revision=excluded.revision",
                (kind, key, text, revision),
            )
        return revision

    def _append(self, db: sqlite3.Connection, kind: str, key: str, text: str | None) -> int:
        """Log one write (inside the writer's transaction); its revision. Every
        ``_compact_every`` revisions the rows beyond the window go, and the mark with
        them, in the same transaction."""
        cur = db.execute(
            "INSERT INTO changes (kind, key, value) VALUES (?, ?, ?)", (kind, key, text)
        )
        revision = int(cur.lastrowid or 0)
        below = revision - self.keep_changes
        if revision % self._compact_every == 0 and below > 0:
            db.execute("DELETE FROM changes WHERE revision <= ?", (below,))
            db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'compacted'", (below,))
        return revision

    async def create(self, kind: str, key: str, value: Document) -> int:
        return await self._run(lambda: self._write(kind, key, value, must_be_new=True))

    async def put(self, kind: str, key: str, value: Document) -> int:
        return await self._run(lambda: self._write(kind, key, value, must_be_new=False))

    def _patch(self, kind: str, key: str, changes: Document) -> tuple[int, Document | None]:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT value FROM objects WHERE kind=? AND key=?", (kind, key)
            ).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return 0, None
            value = {**_load(row[0]), **changes}
            text = json.dumps(value, separators=(",", ":"))
            revision = self._append(db, kind, key, text)
            db.execute(
                "UPDATE objects SET value=?, revision=? WHERE kind=? AND key=?",
                (text, revision, kind, key),
            )
            db.execute("COMMIT")
            self._signal_change()
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return revision, value

    async def patch(self, kind: str, key: str, changes: Document) -> tuple[int, Document] | None:
        revision, value = await self._run(lambda: self._patch(kind, key, changes))
        return None if value is None else (revision, value)

    async def delete(self, kind: str, key: str) -> int:
        return await self._run(lambda: self._write(kind, key, None, must_be_new=False))

    def _swap(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        return self._swap_many(kind, [(key, expected, value)])[0]

    def _swap_many(
        self,
        kind: str,
        items: Sequence[tuple[str, Document | None, Document | None]],
        db: sqlite3.Connection | None = None,
    ) -> builtins.list[int | None]:
        db = db or self._conn
        results: builtins.list[int | None] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, expected, value in items:
                results.append(self._swap_one(db, kind, key, expected, value))
            if any(results):
                db.execute("COMMIT")
                self._signal_change()
            else:
                db.execute("ROLLBACK")  # nothing written
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    def _swap_one(
        self,
        db: sqlite3.Connection,
        kind: str,
        key: str,
        expected: Document | None,
        value: Document | None,
    ) -> int | None:
        """One compare-and-set inside the caller's write transaction."""
        row = db.execute("SELECT value FROM objects WHERE kind=? AND key=?", (kind, key)).fetchone()
        current = None if row is None else _load(row[0])
        if current != expected:
            return None
        if value is None and current is None:
            return 0
        text = None if value is None else json.dumps(value, separators=(",", ":"))
        return self._put_row(db, kind, key, text)

    async def swap(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        return await self._run(lambda: self._swap(kind, key, expected, value))

    async def swap_many(
        self, kind: str, items: Sequence[tuple[str, Document | None, Document | None]]
    ) -> builtins.list[int | None]:
        """``SwapsMany``: in transactions of ``SWAP_BATCH`` (the file's write lock is not
        held for long at a time, other workers write in between)."""
        results: builtins.list[int | None] = []
        for start in range(0, len(items), SWAP_BATCH):
            chunk = items[start : start + SWAP_BATCH]
            results.extend(await self._run(functools.partial(self._swap_many, kind, chunk)))
        return results

    # -- ahead of the queue (``UrgentWrites``) ---------------------------------------------

    def _urgent_conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        if self._urgent_db is None:
            self._urgent_db = self._connect()
        return self._urgent_db

    async def _run_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._urgent, lambda: fn(self._urgent_conn()))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def get_now(self, kind: str, key: str) -> Document | None:
        def op(db: sqlite3.Connection) -> Document | None:
            row = db.execute(
                "SELECT value FROM objects WHERE kind=? AND key=?", (kind, key)
            ).fetchone()
            return None if row is None else _load(row[0])

        return await self._run_now(op)

    async def swap_now(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        return (
            await self._run_now(lambda db: self._swap_many(kind, [(key, expected, value)], db))
        )[0]

    async def revision(self) -> int:
        def op() -> int:
            row = self._conn.execute("SELECT MAX(revision) FROM changes").fetchone()
            return int(row[0] or 0)

        return await self._run(op)

    async def snapshot(self) -> Snapshot:
        def op() -> Snapshot:
            db = self._conn
            db.execute("BEGIN")  # one read transaction: one point in the log
            try:
                return _read_all(db)
            finally:
                _end_read(db)

        return await self._run(op)

    def recent_changes(self, after: int) -> Sequence[Change] | None:
        signal = self._signal
        if signal is not None:
            seen = signal[0:8]
            if seen == self._signal_seen:
                return None
            self._signal_seen = seen
        # Something was committed: read the new log rows through a second connection,
        # used from the event loop thread (a query on the indexed log, rarely taken).
        probe = self._probe
        if probe is None:
            probe = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            probe.execute("PRAGMA busy_timeout=1000")
            self._probe = probe
        try:
            # Fallen behind (rare): everything, read now, so that the caller need not
            # trust a request to what it held before.
            rows = _read_log(probe, after, None, snapshot=True)
        except sqlite3.Error:
            self._signal_seen = b""  # not read: ask again next time
            return None
        return [Change(r, k, key, None if v is None else _load(v)) for r, k, key, v in rows]

    async def changes(self, after: int) -> AsyncIterator[Change]:
        last = after
        signal_seen = b""
        interval = POLL_INTERVAL_S
        while True:
            if self._signal is not None:
                current = self._signal[0:8]
                if current == signal_seen:
                    await asyncio.sleep(interval)  # nobody wrote: no query at all
                    interval = min(interval * 2, POLL_IDLE_MAX_S)
                    continue
                signal_seen = current
                interval = POLL_INTERVAL_S

            def op(since: int = last) -> list[tuple[int, str, str, str | None]]:
                return _read_log(self._conn, since, 1000)

            rows = await self._run(op)
            for revision, kind, key, value in rows:
                last = revision
                yield Change(revision, kind, key, None if value is None else _load(value))
            if len(rows) == 1000:
                signal_seen = b""  # more to read
            elif not rows:
                await asyncio.sleep(interval)
                interval = min(interval * 2, POLL_IDLE_MAX_S)

    async def close(self) -> None:
        def close_urgent() -> None:
            if self._urgent_db is not None:
                self._urgent_db.close()
                self._urgent_db = None

        await asyncio.get_running_loop().run_in_executor(self._urgent, close_urgent)
        self._urgent.shutdown(wait=False)

        def op() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._probe is not None:
                self._probe.close()
                self._probe = None
            if self._signal is not None:
                self._signal.close()
                self._signal = None

        await self._run(op)
        self._executor.shutdown(wait=False)


class _Op:
    """One operation waiting for, or on, a trip to the store's thread."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


def _read_log(
    db: sqlite3.Connection, after: int, limit: int | None, snapshot: bool = False
) -> list[tuple[int, str, str, str | None]]:
    """The log's rows above ``after``, read in one transaction with the compaction mark:
    ``Compacted`` if rows above ``after`` were removed already (with ``snapshot``, it
    carries every document, read in the same transaction)."""
    db.execute("BEGIN")
    try:
        mark = db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()
        compacted = int(mark[0]) if mark else 0
        if compacted > after:
            raise Compacted(after, compacted, _read_all(db) if snapshot else None)
        rows: list[tuple[int, str, str, str | None]] = db.execute(
            "SELECT revision, kind, key, value FROM changes WHERE revision > ? "
            "ORDER BY revision LIMIT ?",
            (after, -1 if limit is None else limit),
        ).fetchall()
    finally:
        _end_read(db)
    return rows


def _end_read(db: sqlite3.Connection) -> None:
    """End a read transaction (a rollback: nothing to keep, and it cannot be busy)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _read_all(db: sqlite3.Connection) -> Snapshot:
    """Every document and the revision they are at (inside the caller's transaction)."""
    row = db.execute("SELECT MAX(revision) FROM changes").fetchone()
    rows = db.execute("SELECT kind, key, value FROM objects ORDER BY kind, key").fetchall()
    return Snapshot(int(row[0] or 0), [(k, key, _load(v)) for k, key, v in rows])


def _migrate_layout(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file's tables to ``LAYOUT_VERSION`` in one write transaction (several
    processes may open it at once); refuse a file from a newer herdgate."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > LAYOUT_VERSION:
            raise SchemaTooNew(
                f"{path}: table layout {version} is newer than this herdgate's "
                f"({LAYOUT_VERSION}); run the herdgate that wrote it, or restore a backup"
            )
        for step in LAYOUTS[version:]:
            step(db)
        if version < LAYOUT_VERSION:
            db.execute(f"PRAGMA user_version = {LAYOUT_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700 (``mkdir(parents=True)`` would
    give the parents the umask's mode); existing ones are left as they are."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        path.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened


def _narrow(path: Path) -> None:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)


def _load(text: str) -> Document:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError("corrupt document")
    return value
