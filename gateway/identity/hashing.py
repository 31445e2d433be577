"""Random ids and secrets, token hashes and password hashes (pure, no I/O).

Token secrets carry about 257 bits of randomness, so a fast salted hash is enough
and keeps validation cheap on the hot path: SHA3-512 over salt and secret, in
Rancher's ``$3:1:<salt>:<hash>`` format so the same hash can be synced to a
downstream cluster for its TokenReview webhook. Passwords are low-entropy and get
scrypt (N=2^15, r=8, p=1), which costs tens of milliseconds per check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""Rancher's token alphabet: no vowels (no words), no look-alike characters."""
SECRET_LENGTH = 54
"""54 characters of a 27-letter alphabet: about 257 bits."""
ID_LENGTH = 5

_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def random_string(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_id(prefix: str) -> str:
    """``prefix-xxxxx``, as Rancher names its objects (callers retry on collision)."""
    return f"{prefix}-{random_string(ID_LENGTH)}"


def new_secret() -> str:
    return random_string(SECRET_LENGTH)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_token(secret: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha3_512(salt + secret.encode("utf-8")).digest()
    return f"$3:1:{_b64(salt)}:{_b64(digest)}"


def parse_token_hash(stored: str) -> tuple[bytes, bytes] | None:
    """(salt, digest) of a ``$3:1:salt:hash`` string, or None if it is not one."""
    parts = stored.split(":")
    if len(parts) != 4 or parts[0] != "$3" or parts[1] != "1":
        return None
    try:
        return base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except ValueError:
        return None


def verify_token_parts(secret: str, salt: bytes, expected: bytes) -> bool:
    """The request path's check: the hash parts were parsed once, when the token loaded."""
    digest = hashlib.sha3_512(salt + secret.encode("utf-8")).digest()
    return hmac.compare_digest(digest, expected)


def verify_token(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a ``$3:1:salt:hash`` string."""
    parts = parse_token_hash(stored)
    return parts is not None and verify_token_parts(secret, *parts)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM,
        dklen=32,
    )
    return f"$scrypt$n={_SCRYPT_N},r={_SCRYPT_R},p={_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "scrypt":
        return False
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except (KeyError, ValueError):
        return False
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )
    return hmac.compare_digest(digest, expected)


DUMMY_PASSWORD_HASH = hash_password(secrets.token_hex(16))
"""Checked when a user does not exist, so both answers take the same time."""
