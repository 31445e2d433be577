"""Every use of a dependency's private internals, each behind one checked assumption.

herdgate reaches below the public API of a few dependencies where that bought a measured
speed-up (or, for aiohttp's upgrade hook, the only way in). Each such use lives in one
module here, one per dependency:

- :mod:`config.compat.ssl_internals`: CPython's ``ssl`` (``_sslobj``, ``SSLObject._create``)
  and OpenSSL's ``SSL_CTX`` through ``ctypes`` (TLS read-ahead);
- :mod:`config.compat.aiohttp_internals`: aiohttp's WebSocket mask helper,
  ``RequestHandler.set_parser`` and ``Server.connection_lost``;
- :mod:`gateway.identity.providers.ldap3_compat` (where ldap3 is imported anyway): ldap3's address
  and server-pool availability, checked when an LDAP provider is built.

HPACK's static table and Huffman code are our own, written from RFC 7541
(:mod:`gateway.front.hpack_tables`), so ``hpack`` is only a test dependency (the reference).

Each use is an :class:`Assumption` with a probe: a cheap self-test that exercises the
private thing as herdgate uses it (no I/O beyond a socket pair, no network). The gateway
and the agent run :func:`self_test` at start-up; code that uses an assumption asks
:meth:`Assumption.holds` (checked once per process, then a stored answer). When a probe
fails, the optimisation is turned off (each module says what runs instead) and one
WARNING line says which assumption failed, why, and what runs instead: a dependency
upgraded past what was tested degrades, it does not crash. The tested versions are the
upper bounds in ``pyproject.toml``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

GATEWAY = "gateway"
AGENT = "agent"


class Broken(Exception):
    """Raised by a probe: the private thing is not as herdgate expects it."""


class Assumption:
    """One assumption about a dependency's private internals, checked once per process."""

    def __init__(
        self,
        name: str,
        relies_on: str,
        fallback: str,
        probe: Callable[[], None],
        programs: tuple[str, ...] = (GATEWAY, AGENT),
    ) -> None:
        self.name = name
        self.relies_on = relies_on
        """The private thing, as the WARNING names it."""
        self.fallback = fallback
        """What runs instead when the probe fails, as the WARNING says it."""
        self.programs = programs
        """The programs whose start-up self-test runs the probe."""
        self._probe = probe
        self._checked = False
        self._failure: str | None = None
        self._warned = False
        REGISTRY.append(self)

    @property
    def failure(self) -> str | None:
        """Why the probe failed (None: it passed, or has not run)."""
        return self._failure

    def evaluate(self) -> bool:
        """Run the probe (once per process) without logging; whether it passed."""
        if not self._checked:
            try:
                self._probe()
            except Exception as exc:  # noqa: BLE001 - whatever breaks, the fallback runs
                self._failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._checked = True
        return self._failure is None

    def holds(self) -> bool:
        """Whether the assumption holds; the first time it does not, one WARNING."""
        ok = self.evaluate()
        if not ok and not self._warned:
            self._warned = True
            logger.warning(
                "dependency check %s failed: %s is not as tested (%s); %s",
                self.name,
                self.relies_on,
                self._failure,
                self.fallback,
            )
        return ok

    def reset(self) -> None:
        """Forget the answer (tests that break the private thing, then check again)."""
        self._checked = False
        self._failure = None
        self._warned = False


REGISTRY: list[Assumption] = []
"""Every assumption, in the order their modules were imported."""


def _modules() -> None:
    """Import every compat module, so that all assumptions are registered."""
    from config.compat import aiohttp_internals, ssl_internals

    del aiohttp_internals, ssl_internals


def self_test(program: str, assumptions: Iterable[Assumption] | None = None) -> list[Assumption]:
    """Check every assumption ``program`` relies on (at start-up); return those that
    failed, each already reported by one WARNING."""
    if assumptions is None:
        _modules()
        assumptions = [a for a in REGISTRY if program in a.programs]
    return [a for a in assumptions if not a.holds()]
