"""Verification of token hashes as the gateway writes them (pure, no I/O).

A copy of ``gateway.identity.hashing.verify_token``: the webhook runs inside a downstream
cluster and must not depend on the gateway package. The format is Rancher's SHA3
token hash, ``$3:1:<salt base64>:<SHA3-512(salt + secret) base64>``. A unit test
(tests/unit/webhook/test_hashes.py) checks that both agree.

Checking a hash is one SHA3-512 over a short input, no more than hashing the secret for
a cache key would, so results are not cached (docs/design.md section 7 has the figure).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SHA3_PREFIX = "$3:1:"
_DIGEST_BYTES = 64


def is_supported(stored: str) -> bool:
    """Whether ``stored`` is a well-formed SHA3 token hash (salt and digest decode)."""
    return _parts(stored) is not None


def _parts(stored: str) -> tuple[bytes, bytes] | None:
    parts = stored.split(":")
    if len(parts) != 4 or parts[0] != "$3" or parts[1] != "1":
        return None
    try:
        salt = base64.b64decode(parts[2], validate=True)
        expected = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return None
    if len(expected) != _DIGEST_BYTES:
        return None
    return salt, expected


def verify_token(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a ``$3:1:salt:hash`` string."""
    parsed = _parts(stored)
    if parsed is None:
        return False
    salt, expected = parsed
    try:
        raw = secret.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON: never a real secret
        return False
    digest = hashlib.sha3_512(salt + raw).digest()
    return hmac.compare_digest(digest, expected)
