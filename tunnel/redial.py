"""After a dial fails: how long the agent waits, what it logs, and when it gives up (sans I/O).

Three kinds of failure (:class:`Failure`):

- ``UNREACHABLE``: no answer (connect, TLS, a timeout, the tunnel's handshake). The
  gateway may be restarting: back off up to ``backoff_max`` (30 s by default), so the
  tunnel is back soon after it is.
- ``REFUSED``: an answer that says no for now (429 with its ``Retry-After``, 5xx, or a
  401/403/404 from something that is not the gateway's agent endpoint): back off up to
  ``REFUSED_MAX_S`` (5 minutes).
- ``TOKEN_INVALID``: the gateway says the registration token is not valid and will not
  become valid (its 401 with ``X-Herdgate-Refusal: token-invalid``: unknown, revoked or
  expired, or its cluster was deleted). After ``GIVE_UP_AFTER`` such answers in a row,
  with no tunnel up, the agent gives up and exits (``tunnel.agent.TokenRefused``); the
  few tries cover a replica that has not yet seen a brand-new token.

Back-off is exponential with jitter that keeps a floor: each wait is between half the
current ceiling and the ceiling (``backoff_delay``), so the waits really grow. A failure
is logged when it first happens, with its reason and the wait; the same failure again is
logged at most once every ``REPEAT_LOG_S`` (with how often it happened since), otherwise
at DEBUG.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass

REFUSAL_HEADER = "X-Herdgate-Refusal"
"""On the gateway's refusal of ``GET /v3/connect``: why, for the agent."""
TOKEN_INVALID_REFUSAL = "token-invalid"
"""...the registration token is not valid, and will not become valid."""
CLUSTER_FULL_REFUSAL = "cluster-full"
"""...the cluster has all the agents it may (a 429 with ``Retry-After``)."""
REFUSED_MAX_S = 300.0
"""The longest wait after a refusal."""
REPEAT_LOG_S = 600.0
"""The same failure is logged again at most this often."""
GIVE_UP_AFTER = 3
"""``TOKEN_INVALID`` answers in a row (and no tunnel up) before the agent gives up."""


class Failure(enum.Enum):
    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    TOKEN_INVALID = "token-invalid"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one failed dial."""

    delay_s: float
    """How long to wait before the next dial."""
    level: int
    """The level to log ``message`` at (DEBUG for a repeat not worth a line)."""
    message: str
    give_up: bool = False


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Exponential back-off with jitter: uniform in [ceiling / 2, ceiling], the ceiling
    being ``min(max_s, initial_s * 2**attempt)``."""
    rng = rng or random.SystemRandom()
    ceiling = min(max_s, initial_s * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


class Redial:
    """The agent's failed dials in a row, and what it said about them (pure: the caller
    gives the time)."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        refused_max_s: float = REFUSED_MAX_S,
        repeat_log_s: float = REPEAT_LOG_S,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.refused_max_s = max(refused_max_s, max_s)
        self.repeat_log_s = repeat_log_s
        self._rng = rng or random.SystemRandom()
        self.attempt = 0
        """Failures since the last tunnel that held."""
        self._invalid = 0
        self._last: tuple[Failure, str] | None = None
        self._repeats = 0
        self._first_at = 0.0
        self._logged_at = 0.0

    def failed(
        self,
        kind: Failure,
        reason: str,
        now: float,
        retry_after_s: float = 0.0,
        holding: bool = False,
    ) -> Verdict:
        """A dial failed for ``reason``; ``holding``: tunnels to other replicas are up."""
        self.attempt += 1
        self._invalid = self._invalid + 1 if kind is Failure.TOKEN_INVALID else 0
        cap = self.max_s if kind is Failure.UNREACHABLE else self.refused_max_s
        delay = backoff_delay(self.attempt, self.initial_s, cap, self._rng)
        if 0 < retry_after_s <= self.refused_max_s:
            delay = max(delay, retry_after_s)
        give_up = kind is Failure.TOKEN_INVALID and self._invalid >= GIVE_UP_AFTER and not holding
        key = (kind, reason)
        if key != self._last:
            self._last, self._repeats, self._first_at = key, 1, now
            loud = True
        else:
            self._repeats += 1
            loud = now - self._logged_at >= self.repeat_log_s
        if give_up:
            return Verdict(delay, logging.ERROR, f"{reason}; giving up", give_up=True)
        if not loud:
            return Verdict(delay, logging.DEBUG, f"{reason}; retrying in {delay:.1f} s")
        self._logged_at = now
        level = logging.ERROR if kind is Failure.TOKEN_INVALID else logging.WARNING
        if self._repeats == 1:
            return Verdict(delay, level, f"{reason}; retrying in {delay:.0f} s")
        minutes = (now - self._first_at) / 60
        return Verdict(
            delay,
            level,
            f"{reason} (still, {self._repeats} times in {minutes:.0f} min); "
            f"retrying in {delay:.0f} s",
        )

    def lost_soon(self) -> float:
        """A tunnel closed soon after it was made: the wait before dialling again."""
        self.attempt += 1
        return backoff_delay(self.attempt, self.initial_s, self.max_s, self._rng)

    def connected(self) -> None:
        """A tunnel is up: the next failure is news again."""
        self._invalid = 0
        self._last = None

    def reset(self) -> None:
        """A tunnel held long enough: back-off starts over."""
        self.attempt = 0
        self._invalid = 0
        self._last = None
