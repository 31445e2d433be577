"""Long-running answers by who holds them, ended when that identity loses access.

A watch, a followed log or an exec/attach/port-forward session is authorised once, when
it starts, and may last for days. Teleport ends a locked user's sessions at once;
herdgate does the same. When a token is revoked (deleted) or expires, a user is disabled
or deleted, or a change of bindings (or of the user's groups or admin flag) lowers the
caller's role on the cluster or takes it away, every streamed answer and session that
identity holds is ended:

- a watch or followed log ends cleanly, as when the API server ends it (the client sees
  the end of the answer and, trying again, gets 401 or 403);
- an exec, attach or port-forward session is closed (the tunnel stream is reset, then
  the client connection).

Changes arrive through ``Directory.on_change``: this process's own writes at once, other
workers' and replicas' through the store's change feed, which ``Sessions`` also polls
(``Directory.catch_up``, an 8-byte read when nothing changed) every ``CHECK_EVERY_S``
while it holds anything, with token expiry. So an answer is ended within about a second
of the change, on every gateway process.

Every answer the proxy streams is held here (not only those ``gateway.proxy.requestinfo``
calls long-running): a request the gateway misreads cannot outlive its credential.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable

from aiohttp import web

from config.identity import Identity
from gateway.identity.directory import Directory
from gateway.store.records import (
    BINDING,
    CLUSTER,
    PROJECT_BINDING,
    ROLE_RANK,
    ROLE_TEMPLATE,
    TOKEN,
    USER,
)
from gateway.telemetry.drain import Drain

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 0.5
"""How often other processes' changes and token expiry are looked at while anything is
held (no timer runs while nothing is)."""

Ender = Callable[[], None]


class _Held:
    __slots__ = ("cluster_id", "end", "identity", "key", "role")

    def __init__(
        self, key: int, identity: Identity, cluster_id: str, role: str, end: Ender
    ) -> None:
        self.key = key
        self.identity = identity
        self.cluster_id = cluster_id
        self.role = role
        self.end = end


class Sessions:
    """What each identity holds open, and ending it (see the module docstring)."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._held: dict[int, _Held] = {}
        self._by_token: dict[str, set[int]] = {}
        self._by_user: dict[str, set[int]] = {}
        self._keys = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self.ended = 0
        """Answers ended because their identity lost access (for tests and logs)."""
        directory.on_change(self._changed)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, identity: Identity, cluster_id: str, role: str, end: Ender) -> Ender:
        """Remember that ``identity`` holds an answer on ``cluster_id`` with ``role``;
        ``end()`` ends it. Returns how to forget it (call it when the answer is done)."""
        key = next(self._keys)
        held = _Held(key, identity, cluster_id, role, end)
        self._held[key] = held
        if identity.token_id:
            self._by_token.setdefault(identity.token_id, set()).add(key)
        self._by_user.setdefault(identity.user_id, set()).add(key)
        self._schedule()
        # A change between the request's authentication and now (the API server's
        # answer took that long) was not seen by ``_changed`` for this answer.
        self._check((key,))
        return _Forget(self, key)

    def _forget(self, key: int) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        for index, name in (
            (self._by_token, held.identity.token_id),
            (self._by_user, held.identity.user_id),
        ):
            keys = index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[name]
        if not self._held and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- deciding ----------------------------------------------------------------------

    def _changed(self, kind: str, key: str) -> None:
        if not self._held:
            return
        try:
            if kind == TOKEN:
                self._check(self._by_token.get(key, ()))
            elif kind == USER:
                self._check(self._by_user.get(key, ()))
            elif kind in (BINDING, PROJECT_BINDING, ROLE_TEMPLATE, CLUSTER):
                self._check(list(self._held))  # rare: look at everything held
        except Exception:
            # Called inside the directory's write (or feed): never make that fail.
            logger.exception("checking long-running answers after a change failed")

    def _check(self, keys: Iterable[int]) -> None:
        now = self._directory.clock()
        for key in list(keys):
            held = self._held.get(key)
            if held is not None:
                reason = self._lost(held, now)
                if reason:
                    self._end(held, reason)

    def _lost(self, held: _Held, now: float) -> str:
        """Why ``held`` may no longer go on; "" if it may."""
        d = self._directory
        identity = held.identity
        if identity.token_id:
            token = d.tokens.get(identity.token_id)
            if token is None:
                return "token revoked"
            if token.is_expired(now):
                return "token expired"
        user = d.users.get(identity.user_id)
        if user is None:
            return "user deleted"
        if not user.enabled:
            return "user disabled"
        if held.cluster_id not in d.clusters:
            return "cluster deleted"
        # The user's groups and admin flag as the store has them now (a provider's
        # groups are written to the user record at each login and refresh).
        role = d.role_on(d.identity_of(user, identity.token_id), held.cluster_id)
        if role is None:
            return "no role on the cluster"
        if ROLE_RANK[role] < ROLE_RANK.get(held.role, 0):
            return f"role lowered to {role}"
        return ""

    def _end(self, held: _Held, reason: str) -> None:
        self._forget(held.key)
        self.ended += 1
        logger.info(
            "ending a long-running answer of user %s on cluster %s: %s",
            held.identity.user_id,
            held.cluster_id,
            reason,
        )
        try:
            held.end()
        except Exception:
            logger.exception("ending an answer failed")

    # -- the timer: other processes' changes and token expiry ---------------------------

    def _schedule(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (unit tests of the bookkeeping): changes still apply
            self._timer = loop.call_later(CHECK_EVERY_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self._held:
            return
        try:
            self._directory.catch_up()  # other processes' writes: ``_changed`` for each
            now = self._directory.clock()
            expiring = []
            for token_id in self._by_token:
                token = self._directory.tokens.get(token_id)
                if token is not None and token.is_expired(now):
                    expiring.append(token_id)
            for token_id in expiring:
                self._check(self._by_token.get(token_id, ()))
        except Exception:
            logger.exception("checking long-running answers failed")
        if self._held:
            self._schedule()


class _Forget:
    """Forgets one held answer (an object, not a closure: one is held per open watch)."""

    __slots__ = ("key", "sessions")

    def __init__(self, sessions: Sessions, key: int) -> None:
        self.sessions = sessions
        self.key = key

    def __call__(self) -> None:
        self.sessions._forget(self.key)


class _Both:
    __slots__ = ("first", "second")

    def __init__(self, first: Ender, second: Ender) -> None:
        self.first = first
        self.second = second

    def __call__(self) -> None:
        self.first()
        self.second()


def hold(
    sessions: Sessions,
    drain: Drain | None,
    identity: Identity | None,
    cluster_id: str,
    role: str | None,
    end: Ender,
) -> Ender:
    """Register a streamed answer with ``sessions`` (when it has an identity) and with
    ``drain`` (when given: long-running answers a stopping gateway ends). Returns how to
    forget it in both."""
    forget_drain = drain.add_ender(end) if drain is not None else None
    if identity is None or role is None:
        return forget_drain or _nothing
    forget = sessions.hold(identity, cluster_id, role, end)
    if forget_drain is None:
        return forget
    return _Both(forget, forget_drain)


def _nothing() -> None:
    return None


SESSIONS = web.AppKey("sessions", Sessions)
"""Streamed answers and sessions by identity, ended when it loses access."""
