"""Random ids and secrets, token hashes and password hashes (pure, no I/O).

Token secrets carry about 257 bits of randomness, so a fast salted hash is enough
and keeps validation cheap on the hot path: SHA3-512 over salt and secret, in
Rancher's ``$3:1:<salt>:<hash>`` format so the same hash can be synced to a
downstream cluster for its TokenReview webhook. The format is defined once, in
``ace.hashes``, which the webhook shares: this module draws the salt and re-exports
``parse_token_hash``, ``verify_token_parts`` and ``verify_token``. Passwords are
low-entropy and get scrypt (N=2^15, r=8, p=1), which costs tens of milliseconds per
check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ace import hashes as ace_hashes
from ace.hashes import parse_token_hash, verify_token, verify_token_parts

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
    """A new ``$3:1:salt:hash`` of ``secret`` with a random salt (the format: ``ace.hashes``)."""
    return ace_hashes.hash_token(secret, secrets.token_bytes(8))


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


__all__ = [
    "ALPHABET",
    "DUMMY_PASSWORD_HASH",
    "ID_LENGTH",
    "SECRET_LENGTH",
    "hash_password",
    "hash_token",
    "new_id",
    "new_secret",
    "parse_token_hash",
    "random_string",
    "verify_password",
    "verify_token",
    "verify_token_parts",
]

DUMMY_PASSWORD_HASH = hash_password(secrets.token_hex(16))
"""Checked when a user does not exist, so both answers take the same time."""
