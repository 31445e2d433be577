"""Identity: who a caller is and what they may do.

The directory (``directory``: users, tokens, role bindings and clusters, cached from the
store), password and token hashing (``hashing``), failed-login limits (``ratelimit``)
and the external identity providers (``providers``: LDAP/AD, OIDC, GitHub).

May import: ``gateway.store``, ``gateway.telemetry``, ``ace`` (the token hash format)
and ``config``.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)
