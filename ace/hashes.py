"""The token hash format, written by the gateway and checked by both (pure, no I/O).

Rancher's SHA3 token hash, ``$3:1:<salt base64>:<SHA3-512(salt + secret) base64>``. This
is the one definition of the format: ``gateway.identity.hashing`` draws the salt and
imports the rest from here, and the webhook (inside a downstream cluster, which must not
depend on the gateway package) checks the hashes the gateway synced with
``verify_token``. A unit test (tests/unit/ace/test_hashes.py) checks that what the
gateway writes verifies here.

Checking a hash is one SHA3-512 over a short input, no more than hashing the secret for
a cache key would, so results are not cached (docs/design.md section 7 has the figure).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SHA3_PREFIX = "$3:1:"
_DIGEST_BYTES = 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_token(secret: str, salt: bytes) -> str:
    """The ``$3:1:salt:hash`` string of ``secret`` with ``salt`` (the caller draws it)."""
    digest = hashlib.sha3_512(salt + secret.encode("utf-8")).digest()
    return f"{SHA3_PREFIX}{_b64(salt)}:{_b64(digest)}"


def is_supported(stored: str) -> bool:
    """Whether ``stored`` is a well-formed SHA3 token hash (salt and digest decode)."""
    return parse_token_hash(stored) is not None


def parse_token_hash(stored: str) -> tuple[bytes, bytes] | None:
    """(salt, digest) of a ``$3:1:salt:hash`` string, or None if it is not one."""
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


def verify_token_parts(secret: str, salt: bytes, expected: bytes) -> bool:
    """Constant-time check of ``secret`` against a hash already parsed into its parts."""
    try:
        raw = secret.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON: never a real secret
        return False
    digest = hashlib.sha3_512(salt + raw).digest()
    return hmac.compare_digest(digest, expected)


def verify_token(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a ``$3:1:salt:hash`` string."""
    parsed = parse_token_hash(stored)
    return parsed is not None and verify_token_parts(secret, *parsed)
