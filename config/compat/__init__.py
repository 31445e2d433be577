"""Every use of a dependency's private internals, each behind one checked assumption.

herdgate reaches below the public API of a few dependencies where that bought a measured
speed-up. Each such use lives in one module here, one per dependency:

- :mod:`config.compat.ssl_internals`: CPython's ``ssl`` (``_sslobj``, ``SSLObject._create``)
  and OpenSSL's ``SSL_CTX`` through ``ctypes`` (TLS read-ahead);
- :mod:`config.compat.aiohttp_internals`: aiohttp's WebSocket mask helper;
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

from collections.abc import Iterable

from config.compat.assumption import AGENT, GATEWAY, REGISTRY, Assumption, Broken

__all__ = ["AGENT", "GATEWAY", "REGISTRY", "Assumption", "Broken", "self_test"]


def _modules() -> None:
    """Import every compat module, so that all assumptions are registered (here, not at
    the top: importing ``config.compat.ssl_internals`` for TLS need not import aiohttp)."""
    from config.compat import aiohttp_internals, ssl_internals

    del aiohttp_internals, ssl_internals


def self_test(program: str, assumptions: Iterable[Assumption] | None = None) -> list[Assumption]:
    """Check every assumption ``program`` relies on (at start-up); return those that
    failed, each already reported by one WARNING."""
    if assumptions is None:
        _modules()
        assumptions = [a for a in REGISTRY if program in a.programs]
    return [a for a in assumptions if not a.holds()]
