from __future__ import annotations

import math

from gateway.identity import hashing


def test_secret_entropy_is_at_least_256_bits() -> None:
    bits = hashing.SECRET_LENGTH * math.log2(len(set(hashing.ALPHABET)))
    assert bits >= 256
    assert len(hashing.new_secret()) == hashing.SECRET_LENGTH


def test_token_hash_round_trip_and_salt() -> None:
    secret = hashing.new_secret()
    a, b = hashing.hash_token(secret), hashing.hash_token(secret)
    assert a != b and a.startswith("$3:1:")
    assert secret not in a
    assert hashing.verify_token(secret, a) and hashing.verify_token(secret, b)
    assert not hashing.verify_token(secret + "x", a)


def test_malformed_stored_hashes_never_verify() -> None:
    for stored in ["", "$3:1:x", "$2:1:a:b", "$3:1:!!:??", "plain"]:
        assert not hashing.verify_token("s", stored)


def test_password_hash_is_scrypt_and_salted() -> None:
    a = hashing.hash_password("hunter2hunter2")
    assert a.startswith("$scrypt$") and "hunter2" not in a
    assert hashing.verify_password("hunter2hunter2", a)
    assert not hashing.verify_password("hunter2hunter3", a)
    assert not hashing.verify_password("x", "$scrypt$n=bad$a$b")


def test_ids_look_like_rancher_ids() -> None:
    value = hashing.new_id("token")
    assert value.startswith("token-") and len(value) == len("token-") + hashing.ID_LENGTH
