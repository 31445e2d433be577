"""Failed-login limits per user name and per source address, kept in the store.

Each key (a user name at a provider, or a client address) keeps the times of its
recent failures in a sliding window. A key that reached its limit is refused until its
oldest failure leaves the window.

The times live in the store (``records.LOGIN_FAILURE``, one document per key, named by
a hash of the key), so every worker and every replica on one store counts the same
failures: five failures spread over two gateway processes lock an account as five on
one would. Every change is a compare-and-set (``Store.swap``), retried a bounded number
of times; a key so contended that the write never lands is refused for a second (it is
under attack). A document whose failures all left the window is deleted when next
touched, and ``LoginLimiter.sweep`` (run periodically) deletes the ones nobody touches
again, so the store holds only keys that failed within the window.

The window arithmetic (``recent``, ``wait``) is pure; times are wall-clock seconds
(replicas compare them), passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.base import Store
from gateway.store.records import LOGIN_FAILURE, fold_username

MAX_TRIES = 16
"""Compare-and-set attempts per change before a key counts as too contended."""
CONTENDED_WAIT_S = 1.0


@dataclass(frozen=True)
class Limit:
    failures: int
    window_s: float


def recent(times: Sequence[float], now: float, window_s: float) -> list[float]:
    """The failures still inside the window, oldest first."""
    cutoff = now - window_s
    return sorted(t for t in times if t > cutoff)


def wait(times: Sequence[float], limit: Limit, now: float) -> float:
    """Seconds until a key with failures ``times`` (already ``recent``) may try again."""
    if len(times) < limit.failures:
        return 0.0
    return max(0.0, times[-limit.failures] + limit.window_s - now)


def _times(doc: dict[str, Any] | None) -> list[float]:
    if doc is None:
        return []
    raw = doc.get("times")
    if not isinstance(raw, list):
        return []
    return [float(t) for t in raw if isinstance(t, int | float) and not isinstance(t, bool)]


Edit = Callable[[list[float]], tuple[list[float], float]]
"""Given the recent failures of a key: its new failures and a result (seconds to wait)."""


class StoredWindow:
    """One kind of key (``scope``: ``user`` or ``address``) with its ``limit``."""

    def __init__(self, store: Store, scope: str, limit: Limit) -> None:
        self.store = store
        self.scope = scope
        self.limit = limit

    def doc_key(self, key: str) -> str:
        return hashlib.sha256(f"{self.scope}\0{key}".encode()).hexdigest()

    async def _change(self, key: str, now: float, edit: Edit) -> float:
        name = self.doc_key(key)
        for _ in range(MAX_TRIES):
            doc = await self.store.get(LOGIN_FAILURE, name)
            stored = _times(doc)
            times = recent(stored, now, self.limit.window_s)
            new, result = edit(times)
            new = new[-max(1, self.limit.failures) :]
            if new == stored and doc is not None:
                return result
            value = None
            if new:
                value = {"id": name, "times": new, "expires": new[-1] + self.limit.window_s}
            if doc is None and value is None:
                return result
            if await self.store.swap(LOGIN_FAILURE, name, doc, value) is not None:
                return result
        return CONTENDED_WAIT_S

    async def retry_after(self, key: str, now: float) -> float:
        doc = await self.store.get(LOGIN_FAILURE, self.doc_key(key))
        return wait(recent(_times(doc), now, self.limit.window_s), self.limit, now)

    async def begin(self, key: str, now: float) -> float:
        """Count an attempt at ``now`` if the key is under its limit (0), else the wait."""

        def edit(times: list[float]) -> tuple[list[float], float]:
            waiting = wait(times, self.limit, now)
            return (times, waiting) if waiting > 0 else ([*times, now], 0.0)

        return await self._change(key, now, edit)

    async def record_failure(self, key: str, now: float) -> None:
        await self._change(key, now, lambda times: ([*times, now], 0.0))

    async def withdraw(self, key: str, at: float, now: float) -> None:
        """Take back one failure recorded at ``at``."""

        def edit(times: list[float]) -> tuple[list[float], float]:
            if at in times:
                times = list(times)
                times.remove(at)
            return times, 0.0

        await self._change(key, now, edit)

    async def clear(self, key: str) -> None:
        await self.store.delete(LOGIN_FAILURE, self.doc_key(key))


class LoginLimiter:
    """Both limits together: a login is refused if either its user or its address is over.

    User names count folded (``fold_username``), as the directory finds users: every
    spelling of one name is one user here too."""

    def __init__(self, store: Store, per_user: Limit, per_address: Limit) -> None:
        self.store = store
        self.users = StoredWindow(store, "user", per_user)
        self.addresses = StoredWindow(store, "address", per_address)

    @staticmethod
    def _user(provider: str, username: str) -> str:
        return f"{provider}\0{fold_username(username)}"

    async def retry_after(self, provider: str, username: str, address: str, now: float) -> float:
        return max(
            await self.users.retry_after(self._user(provider, username), now),
            await self.addresses.retry_after(address, now),
        )

    async def failed(self, provider: str, username: str, address: str, now: float) -> None:
        await self.users.record_failure(self._user(provider, username), now)
        await self.addresses.record_failure(address, now)

    async def begin(self, provider: str, username: str, address: str, now: float) -> float:
        """Let an attempt through (0) or say how long to wait. One let through counts as a
        failure at once (in the store, before the password is checked), so attempts sent
        together, to any process, are limited as if sent one after another; ``succeeded``
        or ``withdraw`` takes it back."""
        user = self._user(provider, username)
        waiting = await self.users.begin(user, now)
        if waiting > 0:
            return waiting
        waiting = await self.addresses.begin(address, now)
        if waiting > 0:
            await self.users.withdraw(user, now, now)
        return waiting

    async def withdraw(self, provider: str, username: str, address: str, at: float) -> None:
        """Take back the attempt ``begin`` counted at ``at``."""
        await self.users.withdraw(self._user(provider, username), at, at)
        await self.addresses.withdraw(address, at, at)

    async def address_retry_after(self, address: str, now: float) -> float:
        """For logins without a user name (OAuth codes, device flows): the address's
        limit only. One shared per-provider key would let a few bad attempts from anyone
        refuse everyone."""
        return await self.addresses.retry_after(address, now)

    async def address_failed(self, address: str, now: float) -> None:
        await self.addresses.record_failure(address, now)

    async def succeeded(self, provider: str, username: str) -> None:
        await self.users.clear(self._user(provider, username))

    async def sweep(self, now: float) -> int:
        """Delete the documents whose failures have all left their window (nobody touched
        them since); how many. Safe in every process at once (compare-and-set)."""
        removed = 0
        for doc in await self.store.list(LOGIN_FAILURE):
            expires = doc.get("expires")
            name = doc.get("id")
            if not isinstance(name, str):
                continue
            if isinstance(expires, int | float) and expires > now:
                continue
            if await self.store.swap(LOGIN_FAILURE, name, doc, None):
                removed += 1
        return removed
