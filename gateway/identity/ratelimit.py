"""Failed-login limits per user name and per source address (pure; time is passed in).

Each key keeps the times of its recent failures in a sliding window. A key that
reached its limit is refused until its oldest failure leaves the window. Memory is
bounded: at most ``max_keys`` keys are tracked, the least recently failed dropped first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from gateway.store.records import fold_username


@dataclass(frozen=True)
class Limit:
    failures: int
    window_s: float


class FailureWindow:
    def __init__(self, limit: Limit, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _trim(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        cutoff = now - self.limit.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        times = self._trim(key, now)
        if times is None or len(times) < self.limit.failures:
            return 0.0
        return times[0] + self.limit.window_s - now

    def record_failure(self, key: str, now: float) -> None:
        times = self._trim(key, now)
        if times is None:
            times = deque()
            self._failures[key] = times
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)
        while len(times) > self.limit.failures:
            times.popleft()

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def withdraw(self, key: str, at: float) -> None:
        """Take back one failure recorded at ``at`` (an attempt that turned out not to be
        a failed guess)."""
        times = self._failures.get(key)
        if times is not None and at in times:
            times.remove(at)
            if not times:
                del self._failures[key]


class LoginLimiter:
    """Both limits together: a login is refused if either its user or its address is over.

    User names count folded (``fold_username``), as the directory finds users: every
    spelling of one name is one user here too."""

    def __init__(self, per_user: Limit, per_address: Limit) -> None:
        self.users = FailureWindow(per_user)
        self.addresses = FailureWindow(per_address)

    def retry_after(self, provider: str, username: str, address: str, now: float) -> float:
        return max(
            self.users.retry_after(f"{provider}\0{fold_username(username)}", now),
            self.addresses.retry_after(address, now),
        )

    def failed(self, provider: str, username: str, address: str, now: float) -> None:
        self.users.record_failure(f"{provider}\0{fold_username(username)}", now)
        self.addresses.record_failure(address, now)

    def begin(self, provider: str, username: str, address: str, now: float) -> float:
        """Let an attempt through (0) or say how long to wait. One let through counts as a
        failure at once, so attempts sent together are limited as if sent one after
        another (checking a password takes tens of ms); ``succeeded`` or ``withdraw``
        takes it back."""
        wait = self.retry_after(provider, username, address, now)
        if wait <= 0:
            self.failed(provider, username, address, now)
        return wait

    def withdraw(self, provider: str, username: str, address: str, at: float) -> None:
        """Take back the attempt ``begin`` counted at ``at``."""
        self.users.withdraw(f"{provider}\0{username.lower()}", at)
        self.addresses.withdraw(address, at)

    def address_retry_after(self, address: str, now: float) -> float:
        """For logins without a user name (OAuth codes, device flows): the address's
        limit only. One shared per-provider key would let a few bad attempts from anyone
        refuse everyone."""
        return self.addresses.retry_after(address, now)

    def address_failed(self, address: str, now: float) -> None:
        self.addresses.record_failure(address, now)

    def succeeded(self, provider: str, username: str) -> None:
        self.users.clear(f"{provider}\0{fold_username(username)}")
