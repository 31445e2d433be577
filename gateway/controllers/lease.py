"""A lease in the store: which gateway process runs a piece of work now.

A lease is one ``leases`` document (``gateway.store.records.LEASE``) naming its holder (a
replica id) and a ``generation`` that grows by one each time the lease changes hands. It
is taken and given up only with the store's compare-and-set (``Store.swap``: the write
holds only if the document is still what was read), so two processes racing for it —
workers on one SQLite file or replicas on etcd — cannot both win.

A lease carries no expiry of its own: it names the holder's *session*, and lasts while
that session does (as etcd's ``concurrency.Session`` carries every key of a holder).

- On a store without leases of its own (SQLite), the session is one more ``leases``
  document, ``session/<holder>``: the holder's host and pid, a random ``session`` id and
  when it expires (wall-clock seconds, as the holder's clock saw it). The holder renews it
  at a third of the TTL by compare-and-set against the document as it last wrote it: one
  write renews every lease the process holds, however many. A lease record names the
  session id it was taken under.
- ``Lease.try_acquire`` is one attempt: take a lease that is absent, released, or whose
  session is gone (deleted, or replaced by a new session id), expired, or held by a
  process of this host that is no longer running (a crashed worker); for a session found
  expired or dead, the taker first deletes the session record (compare-and-set against
  what it read), so its holder's next renewal fails and it can never revive what was
  taken over (a renewal that came first makes the deletion fail, and nothing is taken).
  Keeping a lease we hold costs no write of its own: its session's renewal keeps it.
- ``Lease.held`` says whether we may act: it turns False at ``ttl - margin`` after the
  start of the session's last successful renewal, measured on this process's monotonic
  loop clock, so a holder that cannot renew (the store is unreachable) stops acting before
  anyone else can take the lease (at ``ttl`` after that write, on the wall clock). Clock
  skew between hosts up to the margin (a fifth of the TTL) is tolerated.
- ``LeaseKeeper.run`` keeps a lease while ``want()`` says so: it gives the lease up as
  soon as ``want()`` turns False (marks it released: no holder, its generation kept for
  the next holder to exceed) and reports each change of holding to ``on_change``. One
  timer per session renews it at a third of the TTL for all its keepers (``Lease.join``)
  and wakes them when it ends elsewhere or lapses; a keeper holding a lease sleeps
  otherwise, so thousands of held leases cost neither writes nor wake-ups. A *watched*
  keeper (its owner wakes it when the lease record changes on the change feed, or when
  ``want()`` may have changed) that waits for another holder's lease sleeps long too: on
  SQLite one ``_ForeignSession`` per other holder reads that holder's session record when
  it is due to expire and wakes the waiting keepers only if it ended, lapsed or its
  process is gone; on etcd the record's deletion comes over the feed.
  ``release_all`` gives up every lease of a process at once, in one write (the session
  deleted): a stopping gateway's way out.
- Fencing: ``Lease.generation`` is the generation we hold; writes made on the lease's
  behalf carry it, and a record written under a higher generation is not overwritten
  by a lower one (``gateway.controllers.cluster_health`` does this for cluster status).
  Writes that carry no generation (another system's objects, records of other kinds)
  are fenced by checking ``held()`` immediately before each one (``fence``: raises
  ``LeaseLost``), so a holder that lost its lease stops before anyone else may act.

A lease record from a herdgate before sessions (with an ``expires`` of its own and no
``session``) is judged by its own expiry; records written now carry an ``expires`` far in
the future (``HELD_BY_SESSION``), so such a herdgate sharing the file takes them only
from a holder whose process is gone. Leases and sessions describe running processes:
backups leave them out (``gateway.store.backup``).

On etcd the lease is etcd's own (``EtcdLease``, made by ``lease_for`` wherever the store
has ``ExpiringLeases``): the record is written under the holder's etcd lease of the TTL (a
transaction that holds only if the key is absent or still the revision read), renewed
with etcd's keep-alive, and deleted by etcd itself when the holder stops renewing or
revokes it. Its generation is the etcd revision of the write that took it: a revision is
never handed out twice, so generations grow across holders without any record surviving.
``held`` turns False at ``ttl - margin`` after the start of the last grant or keep-alive
that succeeded; etcd counts the TTL from when it received that request (later), and
extends, never shortens, leases across a leader change, so the holder stops acting before
etcd can let anyone else take the lease.

One lease name per piece of work: ``cluster/<id>`` for each cluster's controller, which
the access sync and the ACE record sync work under too, and ``group-refresh`` for the
periodic re-read of directory users (``gateway.operations.background``). One ``Lease``
object per name and process: a lease we hold is not read again while its session lasts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.store.base import Document, ExpiringLeases, Store, StoreError, UrgentWrites
from gateway.store.records import LEASE

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 15.0
ERROR_RETRY_S = 1.0
"""How soon a keeper tries again after the store failed (never past the lease's end)."""
SESSION_PREFIX = "session/"
"""The key of a holder's session record (``session/<holder>``) among the leases."""
HELD_BY_SESSION = 2**53
"""The ``expires`` of a lease record held under a session: never, for a herdgate from
before sessions, which judged a lease by that field alone."""
HELD_CHECK_TTLS = 20
"""A keeper whose lease its session's timer keeps looks at it again after this many
TTLs if nothing woke it (its session's end or lapse, ``want()`` changing, wake it): a
safety net only, rare because a gateway holds a lease per connected cluster and each look
is a task's wake-up and a timer expiring in a heap of thousands (docs/benchmarks.md,
"Idle CPU at 10,000 tunnels")."""
WAITING_CHECK_TTLS = 4
"""A watched keeper (``LeaseKeeper(watched=True)``) that waits for another holder's lease,
or does not want it, looks again after this many TTLs (less a random quarter, so that
thousands of keepers do not look at once) if nothing woke it: the lease record changing
(released, taken, deleted by etcd), the holder's session ending, lapsing or its process
gone (``_ForeignSession``), or ``want()`` changing."""
FOREIGN_SLACK_S = 0.05
"""How long after another holder's session is due to expire its watch reads it."""


class SingleFlight:
    """One renewal in flight for all its callers: the first starts it, the others wait
    for the same one (shielded, so a caller's cancellation does not stop it)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: asyncio.Future[None] | None = None

    async def join(self, start: Callable[[], Awaitable[None]]) -> None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(start())
        pending = self._pending
        try:
            await asyncio.shield(pending)
        finally:
            if self._pending is pending and pending.done():
                self._pending = None


async def loop_lag() -> float:
    """How long a callback scheduled now waits for the event loop to run it."""
    loop = asyncio.get_running_loop()
    ran: asyncio.Future[float] = loop.create_future()

    def mark() -> None:
        if not ran.done():
            ran.set_result(loop.time())

    start = loop.time()
    loop.call_soon(mark)
    return await ran - start


class LeaseLost(Exception):
    """The lease is no longer certainly this process's: no more writes on its behalf."""


def fence(lease: Lease) -> None:
    """Before a write on the lease's behalf: ``LeaseLost`` unless it is certainly held."""
    if not lease.held():
        raise LeaseLost(lease.name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _SessionTimer(abc.ABC):
    """What both kinds of session share (``_StoreSession`` on a store without leases,
    ``_Session`` on etcd): one timer renews the session at a third of the TTL for every
    keeper that joined (``Lease.join``; held leases then cause no wake-ups of their own)
    and wakes them all when the session ends (its ``ident`` changes) or lapses."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.margin_s = ttl_s / 5
        self.started = float("-inf")
        """Loop time at which the last successful renewal (or start) was sent."""
        self.closed = False
        """Given up for good (``release_all``): no lease is taken under it any more."""
        self._flight = SingleFlight()
        self._members: set[Callable[[], None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    @abc.abstractmethod
    def ident(self) -> object:
        """The current session's identity (falsy: none now): each kind of session says."""

    @property
    def valid_until(self) -> float:
        """Loop time at which leases under this session stop being certainly ours."""
        if not self.ident:
            return float("-inf")
        return self.started + self.ttl_s - self.margin_s

    def join(
        self,
        wake: Callable[[], None],
        now: Callable[[], float],
        renew: Callable[[], Awaitable[Any]],
    ) -> None:
        """A keeper runs under this session: renew it (``renew``) at a third of the TTL
        from now on (one timer, not one per keeper) and call ``wake`` when the session
        ends or lapses."""
        self._members.add(wake)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick(now, renew))

    def leave(self, wake: Callable[[], None]) -> None:
        self._members.discard(wake)
        if not self._members and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    @property
    def ticking(self) -> bool:
        return self._ticker is not None and not self._ticker.done() and not self.closed

    def _stop_ticking(self) -> None:
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _wake_all(self) -> None:
        for wake in list(self._members):
            wake()

    async def _tick(self, now: Callable[[], float], renew: Callable[[], Awaitable[Any]]) -> None:
        told = float("nan")
        """``started`` of the session whose lapse the keepers were told of."""
        while self._members and not self.closed:
            if not self.ident:
                await asyncio.sleep(self.ttl_s / 3)  # none now: a keeper's take starts one
                continue
            due = self.started + self.ttl_s / 3
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            before = self.ident
            failed = False
            late = now() - due
            began = now()
            try:
                async with asyncio.timeout(max(0.05, self.valid_until - now())):
                    await renew()
            except (StoreError, TimeoutError) as exc:
                # What made it late, for whoever reads the log: the event loop (the
                # renewal started late, or a callback waits long to run now) or the store
                # (the write itself took the time).
                waited = now() - began
                lag = await loop_lag()
                logger.warning(
                    "lease session %s: the store failed: %r (renewal started %.2fs late, "
                    "waited %.2fs for the store, event loop lag now %.2fs)",
                    self, exc, late, waited, lag,
                )  # fmt: skip
                failed = True
            if not self.ticking:
                return  # released (``release_all``) meanwhile
            if self.ident != before:
                self._wake_all()  # ended elsewhere: its leases must be taken again
            elif now() >= self.valid_until and told != self.started:
                told = self.started
                self._wake_all()  # lapsed: its keepers must say so now
            if failed:
                await asyncio.sleep(max(0.05, min(ERROR_RETRY_S, self.valid_until - now())))


class _StoreSession(_SessionTimer):
    """A holder's session on a store without leases of its own: one record
    (``session/<holder>``) whose renewal keeps every lease taken under its id."""

    def __init__(self, store: Store, holder: str, ttl_s: float, host: str, pid: int) -> None:
        super().__init__(ttl_s)
        self.store = store
        self.key = SESSION_PREFIX + holder
        self.holder = holder
        self.host = host
        self.pid = pid
        self.record: dict[str, Any] | None = None
        """The session document as we last wrote it (None: no session now)."""

    def __repr__(self) -> str:
        return self.key

    @property
    def ident(self) -> object:
        return self.id

    async def _get(self) -> Document | None:
        if isinstance(self.store, UrgentWrites):
            return await self.store.get_now(LEASE, self.key)
        return await self.store.get(LEASE, self.key)

    async def _swap(self, expected: Document | None, value: Document | None) -> int | None:
        """The session record's compare-and-set, ahead of the store's queue where it has
        one: if it waited behind thousands of other writes past the margin, every lease
        of the process would lapse at once."""
        if isinstance(self.store, UrgentWrites):
            return await self.store.swap_now(LEASE, self.key, expected, value)
        return await self.store.swap(LEASE, self.key, expected, value)

    @property
    def id(self) -> str:
        """The current session's id ("": none)."""
        return "" if self.record is None else str(self.record.get("session", ""))

    async def current(self, now: Callable[[], float], clock: Callable[[], float]) -> str:
        """The session id: renewed first (or started) unless that was less than a third
        of the TTL ago; one write for all callers at once."""
        if self.closed:
            raise StoreError(f"lease session {self.key} was released")
        if self.record is not None and now() - self.started < self.ttl_s / 3:
            return self.id
        await self._flight.join(lambda: self._renew(now, clock))
        return self.id

    async def _renew(self, now: Callable[[], float], clock: Callable[[], float]) -> None:
        started = now()
        wall = clock()
        if self.record is not None:
            renewed = {**self.record, "renewed": wall, "expires": wall + self.ttl_s}
            if await self._swap(self.record, renewed) is not None:
                self.record = renewed
                self.started = started
                return
            # Deleted by a process that found it expired (we could not renew in time) or
            # our process gone: every lease taken under it may be someone else's now.
            logger.info("lease session %s ended elsewhere: its leases are lost", self.key)
            self.record = None
            self.started = float("-inf")
        current = await self._get()
        record: dict[str, Any] = {
            "id": self.key,
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "session": secrets.token_hex(8),
            "started": wall,
            "renewed": wall,
            "expires": wall + self.ttl_s,
        }
        if await self._swap(current, record) is None:
            raise StoreError(f"lease session {self.key} changed while it was started")
        if self.closed:  # released while we wrote: give it up again
            await self._swap(record, None)
            raise StoreError(f"lease session {self.key} was released")
        self.record = record
        self.started = started

    async def release(self) -> None:
        """End the session for good: every lease under it is free at once (one write)."""
        self._stop_ticking()
        record, self.record = self.record, None
        self.started = float("-inf")
        if record is not None:
            await self._swap(record, None)


_STORE_SESSIONS: weakref.WeakKeyDictionary[
    Any, dict[tuple[str, float, str, int], _StoreSession]
] = weakref.WeakKeyDictionary()


def _store_session(store: Store, holder: str, ttl_s: float, host: str, pid: int) -> _StoreSession:
    by_holder = _STORE_SESSIONS.setdefault(store, {})
    key = (holder, ttl_s, host, pid)
    session = by_holder.get(key)
    if session is None:
        session = by_holder[key] = _StoreSession(store, holder, ttl_s, host, pid)
    return session


class _ForeignSession:
    """Another holder's session record (SQLite) that keepers of this process wait on,
    because it holds the leases they want: one timer for all of them reads the record when
    it is due to expire (at most a third of the TTL apart, for a crashed process of this
    host). Renewed: nobody is woken and the timer waits for the new expiry; ended,
    replaced, lapsed or its process gone: every waiting keeper is woken (and tries: the
    first ends the session, ``Lease._takeable``). So keepers waiting on one holder cost
    one read per that holder's renewal period, not two reads per lease."""

    def __init__(
        self,
        store: Store,
        key: str,
        session_id: str,
        ttl_s: float,
        clock: Callable[[], float],
        dead: Callable[[dict[str, Any]], bool],
    ) -> None:
        self.store = store
        self.key = key
        self.session_id = session_id
        self.ttl_s = ttl_s
        self.clock = clock
        self.dead = dead
        self.expires = float("-inf")
        """When the session is due to expire, as last read (wall seconds)."""
        self.members: set[Callable[[], None]] = set()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"{self.key} ({len(self.members)} waiting)"

    def wait(self, wake: Callable[[], None], expires: float) -> None:
        """Call ``wake`` once the session may have ended (``expires``: as just read)."""
        self.members.add(wake)
        self.expires = max(self.expires, expires)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._watch())

    def leave(self, wake: Callable[[], None]) -> None:
        self.members.discard(wake)
        if not self.members:
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._forget()

    def _forget(self) -> None:
        """No one waits any more: drop this watch from ``_FOREIGN`` (other holders'
        sessions come and go with their processes; their watches must not pile up)."""
        by_key = _FOREIGN.get(self.store)
        if by_key is not None and by_key.get((self.key, self.session_id)) is self:
            del by_key[self.key, self.session_id]

    def _over(self, record: dict[str, Any] | None) -> bool:
        if record is None or record.get("session") != self.session_id:
            return True
        expires = record.get("expires")
        if not isinstance(expires, int | float) or self.clock() >= expires:
            return True
        self.expires = float(expires)
        return self.dead(record)

    async def _watch(self) -> None:
        while self.members:
            due = self.expires - self.clock() + FOREIGN_SLACK_S
            await asyncio.sleep(max(0.0, min(due, self.ttl_s / 3)))
            try:
                record = await self.store.get(LEASE, self.key)
            except StoreError:
                await asyncio.sleep(ERROR_RETRY_S)
                continue
            if self._over(record):
                members, self.members = self.members, set()
                self._forget()
                for wake in members:
                    wake()
                return


_FOREIGN: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _ForeignSession]] = (
    weakref.WeakKeyDictionary()
)


class Lease:
    """One named lease as seen by one would-be holder."""

    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        is_running: Callable[[int], bool] = _running,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("a lease needs a positive TTL")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.margin_s = ttl_s / 5
        self.clock = clock
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self._is_running = is_running
        self._monotonic = monotonic
        """How ``held`` reads time (default: the running loop's clock)."""
        self.generation = 0
        """The generation we hold (0: never held)."""
        self._record: dict[str, Any] | None = None
        """The document as we last wrote it."""
        self._session: _StoreSession | None = None
        if not isinstance(store, ExpiringLeases):
            self._session = _store_session(store, holder, ttl_s, self.host, self.pid)
        self._keeper_wake: Callable[[], None] | None = None
        """The keeper's ``wake`` (``join``)."""
        self._waiting: _ForeignSession | None = None
        """The other holder's session the last attempt found holding the lease, watched."""

    def _now(self) -> float:
        if self._monotonic is not None:
            return self._monotonic()
        return asyncio.get_running_loop().time()

    def held(self) -> bool:
        """Whether we hold the lease and may act on it now."""
        return self._record is not None and self._now() < self.valid_until

    def _timer(self) -> _SessionTimer | None:
        return self._session

    async def _renew(self) -> None:
        assert self._session is not None
        await self._session.current(self._now, self.clock)

    def join(self, wake: Callable[[], None]) -> None:
        """A keeper keeps this lease (``LeaseKeeper.run``): its session renews itself
        and calls ``wake`` when it ends or lapses."""
        self._keeper_wake = wake
        timer = self._timer()
        if timer is not None:
            timer.join(wake, self._now, self._renew)

    def leave(self, wake: Callable[[], None]) -> None:
        self._stop_waiting()
        self._keeper_wake = None
        timer = self._timer()
        if timer is not None:
            timer.leave(wake)

    def waiting_delay(self, delay: float, wanted: bool) -> float:
        """How long a watched keeper not holding the lease may sleep (``delay``: until
        its next attempt): long when it does not want the lease, or another holder has
        it and whatever ends that wakes the keeper (see ``WAITING_CHECK_TTLS``)."""
        if wanted and not self._waited_on():
            return delay
        spread = random.uniform(0.75, 1.0)  # noqa: S311 - jitter, not a secret
        return max(delay, WAITING_CHECK_TTLS * self.ttl_s * spread)

    def _waited_on(self) -> bool:
        """Whether the last attempt found the lease held by someone whose end wakes us."""
        return self._waiting is not None

    def _wait_on(self, key: str, current: dict[str, Any], session: dict[str, Any]) -> None:
        """The lease is held under ``session`` (the record ``key``, another holder's,
        live): watch it."""
        wake = self._keeper_wake
        expires = session.get("expires")
        session_id = current.get("session")
        if wake is None or not isinstance(expires, int | float) or not session_id:
            return
        by_key = _FOREIGN.setdefault(self.store, {})
        foreign = by_key.get((key, str(session_id)))
        if foreign is None or not foreign.members:
            foreign = by_key[key, str(session_id)] = _ForeignSession(
                self.store, key, str(session_id), self.ttl_s, self.clock, self._dead
            )
        foreign.wait(wake, float(expires))
        self._waiting = foreign

    def _stop_waiting(self) -> None:
        foreign, self._waiting = self._waiting, None
        if foreign is not None and self._keeper_wake is not None:
            foreign.leave(self._keeper_wake)

    def held_delay(self, delay: float) -> float:
        """How long a keeper holding the lease may sleep (``delay``: until its next
        attempt): long, while its session renews itself and wakes it if it must act."""
        timer = self._timer()
        if timer is not None and timer.ticking:
            return max(delay, HELD_CHECK_TTLS * self.ttl_s)
        return delay

    @property
    def valid_until(self) -> float:
        """Loop time at which ``held`` turns False unless renewed."""
        session = self._session
        if self._record is None or session is None or not session.id:
            return float("-inf")
        if self._record.get("session") != session.id:
            return float("-inf")  # the session it was taken under ended
        return session.valid_until

    def _dead(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` names a process of this host that is no longer running."""
        pid = record.get("pid")
        same_host = record.get("host") == self.host
        return same_host and isinstance(pid, int) and not self._is_running(pid)

    async def _takeable(self, current: dict[str, Any]) -> bool:
        holder = current.get("holder")
        if not holder or holder == self.holder:
            return True  # released, or ours by name (an earlier process with our id)
        wall = self.clock()
        if "session" not in current:
            # Written by a herdgate from before sessions: its own expiry decides.
            expires = current.get("expires")
            return not isinstance(expires, int | float) or wall >= expires or self._dead(current)
        key = SESSION_PREFIX + str(holder)
        session = await self.store.get(LEASE, key)
        if session is None or session.get("session") != current.get("session"):
            return True  # the session it was taken under is over
        expires = session.get("expires")
        if isinstance(expires, int | float) and wall < expires and not self._dead(session):
            self._wait_on(key, current, session)
            return False
        # Expired, or its process gone: end that session first, so that its holder's
        # next renewal fails instead of reviving what we take over. If it renewed in the
        # meantime, this fails and nothing is taken.
        return await self.store.swap(LEASE, key, session, None) is not None

    async def try_acquire(self) -> bool:
        """One attempt to take or keep; whether we hold it now. ``StoreError`` if the
        store failed (``held`` then still tells whether we may go on acting)."""
        session = self._session
        assert session is not None
        self._stop_waiting()
        if session.closed:
            self._lost()
            return False
        session_id = await session.current(self._now, self.clock)
        if self._record is not None:
            if self._record.get("session") == session_id:
                return True  # kept by the session's renewal: no write of its own
            self._lost()  # its session ended: take it again if we may
        current = await self.store.get(LEASE, self.name)
        if current is not None and not await self._takeable(current):
            self._lost()
            return False
        wall = self.clock()
        generation = _generation(current) + 1
        record: dict[str, Any] = {
            "id": self.name,
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "acquired": wall,
            "session": session_id,
            "expires": HELD_BY_SESSION,
            "generation": generation,
        }
        revision = await self.store.swap(LEASE, self.name, current, record)
        if revision is None:
            self._lost()  # someone else wrote it between our read and our write
            return False
        logger.info("lease %s taken by %s (generation %d)", self.name, self.holder, generation)
        self._record = record
        self.generation = generation
        return True

    def _lost(self) -> None:
        if self._record is not None:
            logger.info("lease %s lost by %s", self.name, self.holder)
        self._record = None

    async def release(self) -> None:
        """Give the lease up, if it is still as we wrote it: the record stays, with no
        holder and expired at once, so that its generation goes on growing. (Deleting it
        let the next taker start again at generation 1 while the work's records still
        carried a higher one: that holder's status writes were refused as stale.)"""
        record = self._record
        self._lost()
        if record is not None:
            released = {**record, "holder": "", "pid": 0, "expires": 0}
            await self.store.swap(LEASE, self.name, record, released)


class _Session(_SessionTimer):
    """One etcd lease per holder and store, under which all its lease records are written
    (as etcd's own concurrency sessions do): renewing it once keeps them all, so a replica
    leading many clusters sends one keep-alive per third of the TTL, not one per cluster,
    and its keepers sleep meanwhile (``_SessionTimer``). When it expires, etcd deletes
    every record written under it at once."""

    def __init__(self, leases: ExpiringLeases, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.leases = leases
        self.lease_id = 0

    def __repr__(self) -> str:
        return f"etcd lease {self.lease_id:x}"

    @property
    def ident(self) -> object:
        return self.lease_id

    async def current(self, now: Callable[[], float]) -> tuple[int, float]:
        """The lease id and when it was last renewed: renewed first unless that was less
        than a third of the TTL ago (one request for all callers at once)."""
        if self.closed:
            raise StoreError("the etcd lease session was revoked")
        if self.lease_id and now() - self.started < self.ttl_s / 3:
            return self.lease_id, self.started
        await self._flight.join(lambda: self._renew(now))
        return self.lease_id, self.started

    async def _renew(self, now: Callable[[], float]) -> None:
        started = now()
        if self.lease_id and await self.leases.keep_lease(self.lease_id) > 0:
            self.started = started
            return
        # None yet, or expired (every record under it is gone): a new one.
        self.lease_id = 0
        lease_id, _granted = await self.leases.grant_lease(math.ceil(self.ttl_s))
        if self.closed:  # revoked while we asked: give it up again
            await self.leases.revoke_lease(lease_id)
            raise StoreError("the etcd lease session was revoked")
        self.lease_id = lease_id
        self.started = started

    async def revoke(self) -> None:
        """End it for good: etcd deletes every record written under it (one request)."""
        self._stop_ticking()
        lease_id, self.lease_id = self.lease_id, 0
        if lease_id:
            await self.leases.revoke_lease(lease_id)


_SESSIONS: weakref.WeakKeyDictionary[Any, dict[tuple[str, float], _Session]] = (
    weakref.WeakKeyDictionary()
)


def _session(leases: ExpiringLeases, holder: str, ttl_s: float) -> _Session:
    by_holder = _SESSIONS.setdefault(leases, {})
    session = by_holder.get((holder, ttl_s))
    if session is None:
        session = by_holder[(holder, ttl_s)] = _Session(leases, ttl_s)
    return session


class EtcdLease(Lease):
    """The lease held with the store's own expiring leases (etcd's); see the module."""

    def __init__(self, store: Store, name: str, holder: str, **kw: Any) -> None:
        super().__init__(store, name, holder, **kw)
        assert isinstance(store, ExpiringLeases)
        self.leases: ExpiringLeases = store
        self.session = _session(store, holder, self.ttl_s)
        self.lease_id = 0
        """The etcd lease our record was written under (0: none)."""
        self._blocked = False
        """The last attempt found another holder's record (etcd deletes it when that
        holder's lease ends, and the change feed tells the keeper's owner)."""

    def _timer(self) -> _SessionTimer | None:
        return self.session

    async def _renew(self) -> None:
        await self.session.current(self._now)

    @property
    def valid_until(self) -> float:
        if self._record is None or self.lease_id != self.session.lease_id:
            return float("-inf")  # never taken, or its etcd lease is gone (revoked)
        return self.session.valid_until

    def _takeable_record(self, current: dict[str, Any]) -> bool:
        """A record that is there: ours by name (an earlier process with our id), or left by
        a crashed process of this host. (Anyone else's lasts until etcd expires it.)"""
        if current.get("holder") == self.holder:
            return current != self._record or current.get("etcd_lease") != str(self.lease_id)
        return self._dead(current)

    def _waited_on(self) -> bool:
        return self._blocked

    async def try_acquire(self) -> bool:
        self._blocked = False
        if self.session.closed:
            self._lost()
            return False
        lease_id, _renewed = await self.session.current(self._now)
        if self._record is not None:
            if lease_id == self.lease_id:
                return True  # kept by the session's keep-alive
            self._lost()  # the session expired: etcd deleted our record with it
        current = await self.leases.get_versioned(LEASE, self.name)
        if current is not None and not self._takeable_record(current[0]):
            self._lost()
            self._blocked = True
            return False
        record: dict[str, Any] = {
            "id": self.name,
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "acquired": self.clock(),
            "ttl": self.ttl_s,
            "etcd_lease": str(lease_id),
        }
        expected = 0 if current is None else current[1]
        revision = await self.leases.put_leased(LEASE, self.name, record, lease_id, expected)
        if revision is None:
            self._lost()  # someone else took it between our read and our write
            return False
        logger.info("lease %s taken by %s (generation %d)", self.name, self.holder, revision)
        self.lease_id = lease_id
        self._record = record
        self.generation = revision
        return True

    async def release(self) -> None:
        """Delete our record if it is still ours (the session lives on for the others):
        the next taker's generation is a later revision."""
        record = self._record
        self._lost()
        self.lease_id = 0
        if record is not None:
            await self.store.swap(LEASE, self.name, record, None)


def lease_for(store: Store, name: str, holder: str, **kw: Any) -> Lease:
    """The lease ``name`` for ``holder``: etcd's own where the store has leases, else a
    record under the holder's session record (renewed by compare-and-set)."""
    if isinstance(store, ExpiringLeases):
        return EtcdLease(store, name, holder, **kw)
    return Lease(store, name, holder, **kw)


async def release_all(store: Store, holder: str) -> None:
    """Give up every lease ``holder`` holds on ``store`` at once, in one write per
    session (SQLite: the session record deleted; etcd: its lease revoked, which deletes
    every record under it): others may take them at once. The sessions are closed:
    ``held`` is False from now on for every lease under them, and none is taken again by
    this process. ``StoreError`` if the store failed (the leases then lapse with their
    session, at the TTL)."""
    by_store = _STORE_SESSIONS.get(store, {})
    closing: list[_StoreSession | _Session] = [
        by_store.pop(key) for key in [k for k in by_store if k[0] == holder]
    ]
    if isinstance(store, ExpiringLeases):
        by_etcd = _SESSIONS.get(store, {})
        closing.extend(by_etcd.pop(key) for key in [k for k in by_etcd if k[0] == holder])
    failed: StoreError | None = None
    for session in closing:
        try:
            if isinstance(session, _Session):
                await session.revoke()
            else:
                await session.release()
        except StoreError as exc:
            failed = exc
    if failed is not None:
        raise failed


def _generation(record: dict[str, Any] | None) -> int:
    value = None if record is None else record.get("generation")
    return value if isinstance(value, int) else 0


class _Wakeup:
    """An ``asyncio.Event`` for one waiter, waited for with a timeout: a keeper per
    cluster sleeps on one, so no deque of waiters and no timeout context each."""

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._is_set = False

    async def wait_at_most(self, seconds: float) -> bool:
        """Until set, or for ``seconds``; whether it was set."""
        if self._is_set:
            return True
        if self._waiter is not None:
            raise RuntimeError("a _Wakeup has one waiter")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(seconds, _time_up, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _time_up(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class LeaseKeeper:
    """Keeps one lease while ``want()`` holds; ``on_change(True/False)`` on each change."""

    def __init__(
        self,
        lease: Lease,
        want: Callable[[], bool],
        on_change: Callable[[bool], None],
        watched: bool = False,
    ) -> None:
        self.lease = lease
        self.want = want
        self.on_change = on_change
        self.watched = watched
        """Whoever made the keeper wakes it (``wake``) whenever the lease record changes
        and whenever ``want()`` may have changed: then a keeper not holding the lease
        sleeps long (``Lease.waiting_delay``) instead of reading it every third TTL."""
        self.holding = False
        self._wake = _Wakeup()

    def wake(self) -> None:
        """Try now (``want()`` may have changed)."""
        self._wake.set()

    def _set(self, holding: bool) -> None:
        if holding != self.holding:
            self.holding = holding
            self.on_change(holding)

    async def step(self) -> float:
        """One attempt; the seconds until the next one."""
        lease = self.lease
        if not self.want():
            if lease.held():
                self._set(False)
                with contextlib.suppress(StoreError):
                    await lease.release()
            self._set(False)
            return lease.ttl_s / 3
        if self.holding and not lease.held():
            # It lapsed (we could not renew in time): say so now, before an attempt to
            # take it again that may wait on an unreachable store, so that whoever acts on
            # it stops before anyone else may take it over.
            self._set(False)
        try:
            # A store that hangs must not keep us acting past the lease's end.
            limit = lease.valid_until - lease._now() if lease.held() else lease.ttl_s
            async with asyncio.timeout(max(0.05, limit)):
                holding = await lease.try_acquire()
            delay = lease.ttl_s / 3
        except (StoreError, TimeoutError) as exc:
            logger.warning("lease %s: the store failed: %s", lease.name, exc)
            holding = lease.held()
            delay = ERROR_RETRY_S
        self._set(holding)
        if holding:
            # Never sleep past the moment we must stop acting.
            delay = min(delay, max(0.0, lease.valid_until - lease._now()))
        return delay

    async def run(self) -> None:
        self.lease.join(self.wake)
        try:
            while True:
                self._wake.clear()
                delay = await self.step()
                if self.holding:
                    delay = self.lease.held_delay(delay)
                elif self.watched:
                    delay = self.lease.waiting_delay(delay, self.want())
                await self._wake.wait_at_most(delay)
        finally:
            self.lease.leave(self.wake)
            if self.lease.held():
                self._set(False)
                with contextlib.suppress(StoreError, RuntimeError):
                    await asyncio.shield(self.lease.release())
            self._set(False)
