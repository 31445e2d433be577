"""Identity: who a caller is and what they may do.

The directory (``directory``: the in-memory view of every stored record type, kept
current from the store's change feed: users, tokens, role bindings, and also clusters,
registration tokens and replicas; a new record type is added there), password and
token hashing (``hashing``), failed-login limits (``ratelimit``)
and the external identity providers (``providers``: LDAP/AD, OIDC, GitHub).

May import: ``gateway.store``, ``gateway.telemetry``, ``ace`` (the token hash format)
and ``config``.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)
